#!/bin/sh
# Wall time of the Fashion-MNIST logit-method sweep rows with the live teacher vs the shared teacher cache
# (issue 18); then KD and DKD with a small K (2 views for 4 epochs). Resumable: finished runs are skipped
# (delete results/teacher-cache/sweep-*/runs to time again). Writes results/teacher-cache/sweep_wall.txt.
set -e
cd "$(dirname "$0")/.."
out=results/teacher-cache/sweep_wall.txt
for mode in live cached; do
  start=$(date +%s.%N)
  python -m adakd sweep sweeps/fmnist_logit_${mode}.yaml > results/teacher-cache/sweep-${mode}.log 2>&1
  end=$(date +%s.%N)
  echo "$mode $(echo "$end - $start" | bc) s load $(cut -d' ' -f1-3 /proc/loadavg)" >> $out
done
for m in kd dkd; do
  python -m adakd train configs/fashion_mnist/$m.yaml compare_scratch=false progress=false train.epochs=4 \
    teacher.recipe=null teacher.checkpoint=/tmp/adakd-issue18/teacher-resnet20-e1.pt teacher.cache=auto teacher.cache_views=2 run_dir=results/teacher-cache/smallk/$m-k2-s0 resume=true \
    > results/teacher-cache/smallk-$m.log 2>&1
done
