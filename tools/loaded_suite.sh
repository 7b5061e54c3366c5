#!/usr/bin/env bash
# The whole test suite N times in a row (default 5) while another 2-rank MPI job keeps the machine
# busy: the proof that the tests fail for real reasons only, not for a slow machine (issue 21).
# Prints, per run: the wall time, pytest's summary line and the load average; exit 1 if any run
# failed. Run it from the repository root after the README's set-up:
#     bash tools/loaded_suite.sh [N]
# The load: D-PSGD on 2 ranks (`mpiexec -n 2 python -m mpidist.dpsgd --steps 10000000 --no-trace`),
# restarted whenever it ends, stopped when the runs are done.
set -u
cd "$(dirname "$0")/.."
n=${1:-5}
py=.venv/bin/python
work=$(mktemp -d)
trap 'kill -- -$load 2>/dev/null; wait 2>/dev/null; sleep 2; rm -rf "$work" 2>/dev/null || rm -rf "$work"' EXIT
set -m
( while :; do
    OMP_NUM_THREADS=1 "$(dirname "$py")/mpiexec" -n 2 "$py" -m mpidist.dpsgd --steps 10000000 \
        --no-trace --quiet --trace-dir "$work/load-$(date +%s%N)" > /dev/null 2>&1
    rm -rf "$work"/load-*
  done ) &
load=$!
set +m
sleep 10      # the load is up (torch imported) before the first run
failed=0
for i in $(seq 1 "$n"); do
    start=$(date +%s)
    "$py" -m pytest tests -q -rs -p no:cacheprovider > "$work/run$i.log" 2>&1
    rc=$?
    [ $rc -ne 0 ] && failed=1
    summary=$(grep -E "^[0-9]+ (passed|failed)|^=+ .*(passed|failed)" "$work/run$i.log" | tail -1)
    printf 'run %d: exit %d after %d s, %s, load average %s\n' "$i" "$rc" "$(( $(date +%s) - start ))" \
        "$summary" "$(cut -d' ' -f1-3 /proc/loadavg)"
    if [ $rc -ne 0 ]; then
        grep -E "^(FAILED|ERROR) " "$work/run$i.log" | sed 's/^/    /'
        cp "$work/run$i.log" "loaded_suite_run$i.log" && echo "    full output: loaded_suite_run$i.log"
    fi
done
exit $failed
