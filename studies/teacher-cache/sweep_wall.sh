#!/bin/sh
# Wall time of the Fashion-MNIST logit-method sweep rows (kd, dkd, aekt, dist, ls; seed 0; 15 epochs; the recipe
# teacher) with the live teacher vs one shared teacher cache (issue 18), one sweep after the other. Run it on a quiet
# machine. Resumable: finished runs are skipped (delete studies/teacher-cache/runs/recipe15/sweep-* to time again; delete
# the K=15 cache under $ADAKD_CACHE/teacher_outputs to time its build too). Appends to recipe15/sweep_wall.txt.
set -e
cd "$(dirname "$0")/../.."
out=studies/teacher-cache/recipe15
mkdir -p $out
for mode in live cached; do
  start=$(date +%s.%N)
  python -m adakd sweep studies/teacher-cache/sweep_${mode}.yaml > $out/sweep-${mode}.log 2>&1
  end=$(date +%s.%N)
  echo "$mode $(echo "$end - $start" | bc) s, load after $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)" >> $out/sweep_wall.txt
done
