#!/usr/bin/env bash
# The runs of this folder's table (3 methods x scratch/transferred), one thread each, in
# sequence; resumable: a finished run (wall.txt) is skipped, a stopped one goes on with --resume.
# Each run's train wall seconds go to RUN/wall.txt (summed over resumed segments), its flip test
# to RUN/test_flip/. The table was made with two lanes at once on two cores, E2E and HPFF at the
# config's 38,400 iterations and InfoPro, which had levelled, at 19,200:
#   METHODS="hpff-k4 e2e" INITS=scratch  bash recipes/results/seg-fmnist-scenes/run_grid.sh WORK &
#   METHODS="hpff-k4 e2e" INITS=transfer bash recipes/results/seg-fmnist-scenes/run_grid.sh WORK &
#   python -m hpff_zoo.seg.report WORK/*-scratch WORK/*-transfer --out recipes/results/seg-fmnist-scenes
# ITERS=19200 trains another schedule than the config's (validation every ITERS/4, checkpoint
# every ITERS/8 or every CKPT iterations, poly decay to ITERS), with the same config files.
set -euo pipefail
cd "$(dirname "$0")/../../.."
WORK=${1:-work_dirs/fmnist-scenes}
DATA=${2:-data/fmnist_scenes}
PY=${PY:-python}
declare -A TAG=([e2e]=hpff_resnet32.fmnist_e2e [infopro-k4]=hpff_resnet32.fmnist_infopro_k16 [hpff-k4]=hpff_resnet32.fmnist_infopro_k16_hpff)
for method in ${METHODS:-hpff-k4 infopro-k4 e2e}; do
  for init in ${INITS:-scratch transfer}; do
    run=$WORK/$method-$init
    [ -f "$run/wall.txt" ] && continue
    config=recipes/segmentation/deeplabv3_resnet32_fmnist-scenes-64_$method.py
    extra=()
    [ "$init" = transfer ] && extra=(--backbone-checkpoint "model_cards/${TAG[$method]}")
    [ -f "$run/last_checkpoint" ] && extra+=(--resume)
    [ -n "${ITERS:-}" ] && extra+=(--cfg-options "train_cfg.max_iters=$ITERS"
      "train_cfg.val_interval=$((ITERS / 4))" "default_hooks.checkpoint.interval=${CKPT:-$((ITERS / 8))}"
      "param_scheduler.0.end=$ITERS")
    mkdir -p "$run"
    start=$(date +%s)
    OMP_NUM_THREADS=1 $PY recipes/segmentation.py train "$config" --work-dir "$run" --data-root "$DATA" "${extra[@]}" >> "$run.log" 2>&1
    echo $(( $(date +%s) - start )) >> "$run/segments.txt"
    echo "train $(awk '{s+=$1} END {print s}' "$run/segments.txt")" > "$run/wall.txt"
    ckpt=$(ls "$run"/iter_*.pth | sort -V | tail -1)
    OMP_NUM_THREADS=1 $PY recipes/segmentation.py test "$config" "$ckpt" --tta flip --work-dir "$run/test_flip" --data-root "$DATA" > "$run.test.log" 2>&1
    echo "$method-$init done: $(cat "$run/wall.txt")"
  done
done
