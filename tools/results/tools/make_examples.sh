#!/usr/bin/env bash
# Regenerates the example figures and tables of tools/results/tools/ from short real runs:
#   bash tools/results/tools/make_examples.sh [RUNS_DIR]      (about 10 minutes on 2 cores)
# Runs go to RUNS_DIR (default /tmp/mpidist-tool-examples); figures and tables beside this file.
# FIGURES_ONLY=1 redraws the figures from the runs already in RUNS_DIR.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=tools/results/tools
RUNS=${1:-/tmp/mpidist-tool-examples}
PY=${PY:-.venv/bin/python}
MPIEXEC=${MPIEXEC:-.venv/bin/mpiexec}
T="$PY tools/mpidist_trace.py"
export OMP_NUM_THREADS=1
mkdir -p "$RUNS" "$OUT"
run() {  # run NAME NRANKS MODULE ARGS...
    local name=$1 n=$2 mod=$3; shift 3
    echo "== $name"
    timeout 600 "$MPIEXEC" -n "$n" "$PY" -m "$mod" --trace-dir "$RUNS/$name" --quiet "$@" | tail -3
}

if [ "${FIGURES_ONLY:-0}" != 1 ]; then
rm -rf "${RUNS:?}"/*
# PC-ASGD variants: 4 agents in 2 reliable clusters, delay tau = 4, a 2 ms link
for v in pc p c dasgd; do
    run "pcasgd-$v" 4 mpidist.pcasgd --variant "$v" --clusters 2,2 --delay 4 --steps 60 \
        --eval-every 20 --link-latency 0.002 --link-bandwidth 1e8
done
# AdaComm against fully synchronous SGD and fixed-period PASGD, on a slow link
for m in sync pasgd adacomm; do
    run "adacomm-$m" 2 mpidist.adacomm --method "$m" --time-budget 12 --interval 4 \
        --link-latency 0.01 --link-bandwidth 2e7
done
# DADA's Gradient Accumulation with sync-up period p: 1 source + 2 targets
for p in 1 2 4 8; do
    run "dada-p$p" 3 mpidist.dada --strategy ga --sync-period "$p" --steps 8 --pretrain-steps 20 \
        --eval-every 8
done
# MD-GAN: server + 3 workers
run mdgan 4 mpidist.mdgan -I 20
fi

echo "== figures"
$T summary "$RUNS/pcasgd-pc" --csv "$OUT/pcasgd_summary.csv" > "$OUT/pcasgd_summary.txt"
$T plot "$RUNS/pcasgd-pc" -o "$OUT/pcasgd"
$T plot "$RUNS/mdgan" -o "$OUT/mdgan"
$T plot "$RUNS/adacomm-adacomm" -o "$OUT/adacomm"
$T compare "$RUNS"/pcasgd-{pc,p,c,dasgd} -o "$OUT" --name compare_pcasgd_variants \
    --metrics loss,test_acc --smooth 5 --labels PC-ASGD,P-ASGD,C-ASGD,D-ASGD \
    > "$OUT/compare_pcasgd_variants.txt"
$T compare "$RUNS"/adacomm-{sync,pasgd,adacomm} -o "$OUT" --name compare_adacomm_methods \
    --metrics train_loss --labels sync,PASGD,AdaComm > "$OUT/compare_adacomm_methods.txt"
$T compare "$RUNS"/dada-p{1,2,4,8} -o "$OUT" --name compare_dada_sync_period --x sync_period \
    --metrics target_acc,d_loss \
    > "$OUT/compare_dada_sync_period.txt"
$T export "$RUNS/pcasgd-pc" -o "$RUNS/pcasgd-pc.json"
echo "done: $OUT"
