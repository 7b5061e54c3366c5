#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (controller and compute node on the local host), to try
# the job templates of jobs/ on a laptop or in CI exactly as on a cluster:
#
#     sudo bash jobs/local-slurm.sh            # install if needed, configure, start (idempotent)
#     sbatch --gpus-per-task=0 --cpus-per-task=1 --nodes=1 --ntasks-per-node=4 --time=30 \
#            jobs/adacomm.sbatch --steps 20 --time-budget 0
#     sudo bash jobs/local-slurm.sh status     # daemons, node state, the queue
#     sudo bash jobs/local-slurm.sh stop       # stop the daemons this script started (munged too
#                                              # when this script started it)
#
# What it does (Debian/Ubuntu; needs root for apt, /etc and the daemons):
#   1. installs the distribution's `slurm-wlm` and `munge` packages when slurmctld/slurmd/sbatch
#      or munged are missing (apt-get update first if the package lists are empty or stale);
#   2. creates the munge key if there is none and starts munged (as the munge user);
#   3. writes /etc/slurm/slurm.conf for this host: its short host name, its memory, and
#      CPUs = max(cores, LOCAL_SLURM_CPUS=16). A 4-rank job then fits on a 2-core laptop: SLURM
#      hands out 16 "CPUs" (SlurmdParameters=config_overrides keeps the node from being drained
#      for having fewer real cores) and the kernel shares the real ones (oversubscription; fine
#      for trying templates, not for timing). The file carries a marker line; an existing
#      slurm.conf without that marker (a real site configuration) is never overwritten;
#   4. starts slurmctld and slurmd as plain daemons (no systemd needed, so it works in containers)
#      unless they already answer, restarting them when the configuration changed, and waits
#      until the node is idle. Pid files: /run/slurmctld.pid, /run/slurmd.pid; logs:
#      /var/log/slurm/slurmctld.log and slurmd.log.
# No GPUs are configured here: submit the templates with --gpus-per-task=0 (the tests do), which
# overrides their #SBATCH --gpus-per-task line.
#
# Environment: LOCAL_SLURM_CPUS (default 16), LOCAL_SLURM_PARTITION (default debug),
#              LOCAL_SLURM_NO_INSTALL=1 (fail instead of calling apt-get).
set -euo pipefail

ACTION=${1:-start}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
MARKER="# written by mpidist jobs/local-slurm.sh"
CPUS_MIN=${LOCAL_SLURM_CPUS:-16}
PARTITION=${LOCAL_SLURM_PARTITION:-debug}
LOGDIR=/var/log/slurm
STATE=/var/spool/slurmctld
SPOOL=/var/spool/slurmd

say() { echo "local-slurm: $*"; }
die() { echo "local-slurm: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (sudo bash $0 $ACTION): it installs packages, writes /etc/slurm and starts daemons"

host=$(hostname -s)

pid_alive() {  # pid_alive FILE NAME: the pid in FILE is running the program NAME
    local pid
    [ -r "$1" ] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$2" ]
}

stop_daemon() {  # stop_daemon NAME PIDFILE: only the process this script's pid file names
    local pid
    if pid_alive "$2" "$1"; then
        pid=$(cat "$2")
        kill "$pid"
        for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
        [ -d "/proc/$pid" ] && kill -9 "$pid"
        say "stopped $1 (pid $pid)"
    fi
    rm -f "$2"
}

status() {
    for d in munged slurmctld slurmd; do
        if pgrep -x "$d" >/dev/null; then say "$d running (pid $(pgrep -x "$d" | tr '\n' ' '))"
        else say "$d not running"; fi
    done
    if command -v sinfo >/dev/null && scontrol ping >/dev/null 2>&1; then
        sinfo -N -o "%10N %10T %5c %8m %P" || true
        squeue || true
    fi
}

case "$ACTION" in
    status) status; exit 0 ;;
    stop)
        stop_daemon slurmd /run/slurmd.pid
        stop_daemon slurmctld /run/slurmctld.pid
        # munged only when this script started it (it may serve other software on the host)
        if [ -f /run/local-slurm.munged ]; then
            stop_daemon munged /run/local-slurm.munged
        fi
        exit 0 ;;
    start) ;;
    *) die "unknown action '$ACTION' (start, stop or status)" ;;
esac

# ---------------------------------------------------------------------------- 1. packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
        || ! command -v sbatch >/dev/null || ! command -v munged >/dev/null; then
    [ "${LOCAL_SLURM_NO_INSTALL:-0}" = 1 ] && die "SLURM or munge is not installed (LOCAL_SLURM_NO_INSTALL=1)"
    command -v apt-get >/dev/null || die "no apt-get: install slurmctld, slurmd, slurm-client and munge with your package manager"
    say "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends slurm-wlm munge; then
        apt-get update
        apt-get install -y --no-install-recommends slurm-wlm munge
    fi
fi

# ---------------------------------------------------------------------------- 2. munge
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    say "creating the munge key"
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/log/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    say "starting munged"
    runuser -u munge -- munged
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || die "munged does not answer (see /var/log/munge/munged.log)"
    if [ -s /run/munge/munged.pid ]; then cp /run/munge/munged.pid /run/local-slurm.munged; fi
fi

# ---------------------------------------------------------------------------- 3. slurm.conf
cores=$(nproc)
cpus=$(( cores > CPUS_MIN ? cores : CPUS_MIN ))
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
slurm_user=root
id slurm >/dev/null 2>&1 && slurm_user=slurm

new_conf=$(cat <<EOF
$MARKER: a one-node test cluster, not for production
ClusterName=mpidist-local
SlurmctldHost=$host
SlurmUser=$slurm_user
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=$SPOOL
StateSaveLocation=$STATE
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
# $cores real cores advertised as $cpus CPUs: several small jobs and 4-rank jobs fit on a laptop
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# keep finished jobs visible to 'scontrol show job' for an hour (the tests read their state)
MinJobAge=3600
# SLURM's default: SIGKILL 30 s after SIGTERM, well above the ranks' --term-grace (10 s) on a busy node
KillWait=30
InactiveLimit=0
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
)

mkdir -p "$CONF_DIR" "$LOGDIR" "$STATE" "$SPOOL"
chown "$slurm_user" "$STATE" "$LOGDIR"
changed=0
if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
    die "$CONF exists and was not written by this script; refusing to replace a site configuration (move it away to use the local test cluster)"
fi
if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$new_conf" ]; then
    printf '%s\n' "$new_conf" > "$CONF"
    chmod 0644 "$CONF"
    changed=1
    say "wrote $CONF (node $host: $cpus CPUs on $cores cores, ${mem_mb} MB)"
fi

# ---------------------------------------------------------------------------- 4. daemons
if [ "$changed" = 1 ]; then
    stop_daemon slurmd /run/slurmd.pid
    stop_daemon slurmctld /run/slurmctld.pid
fi
# a daemon of this name running that neither this script nor jobs/local-slurm-two-nodes.sh (its
# own cluster beside this one, "-f /etc/slurm-two-nodes/...") started
foreign() {
    local p
    for p in $(pgrep -x "$1"); do
        tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q -- "-f /etc/slurm-two-nodes/" || return 0
    done
    return 1
}
if ! pid_alive /run/slurmctld.pid slurmctld; then
    foreign slurmctld && die "a slurmctld not started by this script is running; stop it first"
    say "starting slurmctld"
    slurmctld
fi
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
scontrol ping >/dev/null 2>&1 || die "slurmctld does not answer (see $LOGDIR/slurmctld.log)"
if ! pid_alive /run/slurmd.pid slurmd; then
    foreign slurmd && die "a slurmd not started by this script is running; stop it first"
    say "starting slurmd"
    slurmd
fi

state=""
for _ in $(seq 150); do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null | head -1)
    case "$state" in idle|mixed|allocated|completing) break ;; esac
    case "$state" in drain*|down*) scontrol update NodeName="$host" State=RESUME 2>/dev/null || true ;; esac
    sleep 0.2
done
case "$state" in
    idle|mixed|allocated|completing) ;;
    *) die "node $host is '$state', not idle (see $LOGDIR/slurmd.log; 'scontrol show node $host')" ;;
esac
say "ready: node $host $state, partition $PARTITION ($(sinfo -h -o '%c' | head -1) CPUs); try: sbatch --gpus-per-task=0 --cpus-per-task=1 --nodes=1 --ntasks-per-node=4 --time=30 jobs/adacomm.sbatch"
