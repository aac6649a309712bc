#!/bin/bash
# Fashion-MNIST KD quick-start (configs/fashion_mnist/kd.yaml) device-resident (IDX files) vs streamed (a PNG
# image folder from studies/stream/fmnist_to_image_folder.py), one run after the other, for each seed given.
#   bash studies/stream/fmnist_stream_vs_device.sh OUT PNG_FOLDER SEED...        (run from the repository root)
#   python studies/stream/compare_stream_device.py OUT --out studies/stream/fmnist_kd
# CONFIG=configs/fashion_mnist/student.yaml compares the student recipe alone (no teacher).
set -u
out=$1; png=$2; shift 2
config=${CONFIG:-configs/fashion_mnist/kd.yaml}
extra_kd=""; [ "$config" = configs/fashion_mnist/kd.yaml ] && extra_kd="compare_scratch=false"
stream="data.name=image_folder data.root=$png data.options.grayscale=true data.options.mean=[0.2860] \
data.options.std=[0.3530] data.crop_padding=2 data.pipeline=stream data.num_workers=${WORKERS:-1}"
mkdir -p "$out"
for seed in "$@"; do
  for path in device stream; do
    extra=""; [ $path = stream ] && extra="$stream"
    echo "== $path seed $seed start $(date +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    start=$(date +%s)
    # shellcheck disable=SC2086
    adakd train "$config" $extra_kd seed="$seed" progress=false run_dir="$out/$path-s$seed" $extra \
      > "$out/$path-s$seed.log" 2>&1
    echo "== $path seed $seed rc $? wall $(( $(date +%s) - start )) s load $(cut -d' ' -f1-3 /proc/loadavg)"
  done
done
