#!/usr/bin/env bash
# Two emulated SLURM nodes on this machine (two slurmd, "n1" and "n2", on one host), to run the
# job templates across nodes without a cluster:
#
#     sudo bash jobs/local-slurm-two-nodes.sh          # configure and start (idempotent)
#     export SLURM_CONF=/etc/slurm-two-nodes/slurm.conf   # every SLURM command then talks to it
#     srun -N 2 -n 2 --mpi=pmi2 .venv/bin/python -m mpidist.check
#     sbatch --gpus-per-task=0 --cpus-per-task=1 --nodes=2 --ntasks-per-node=2 --time=10 \
#            jobs/dpsgd.sbatch --steps 20
#     sudo bash jobs/local-slurm-two-nodes.sh status | stop
#
# A cluster of its own beside jobs/local-slurm.sh's (which it leaves alone): its configuration in
# /etc/slurm-two-nodes (SLURM_CONF selects it), controller port 6917, slurmd ports 17001/17002, its
# state, spool, pid and log files under /var/lib/slurm-two-nodes. Debian's slurm-wlm (22.05 here)
# runs two slurmd on one host when each node has its own Port and `slurmd -N <name>` names it; the
# nodes share the host name, so MPI's shared-memory split cannot tell them apart by host: the PMI
# of srun tells MPICH which ranks share a node (each emulated node is a node to MPI: messages
# between them take the network path). munged: started if not running (jobs/local-slurm.sh does
# the same). Needs slurm-wlm and munge installed (jobs/local-slurm.sh installs them).
set -euo pipefail
ACTION=${1:-start}
DIR=/etc/slurm-two-nodes
CONF=$DIR/slurm.conf
VAR=/var/lib/slurm-two-nodes
NODES="n1 n2"
CPUS=${LOCAL_SLURM_CPUS:-8}
say() { echo "local-slurm-two-nodes: $*"; }
die() { echo "local-slurm-two-nodes: error: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root: it writes $DIR and starts daemons"
export SLURM_CONF=$CONF

alive() { [ -r "$1" ] && [ -d "/proc/$(cat "$1")" ] && [ "$(cat "/proc/$(cat "$1")/comm")" = "$2" ]; }
stop_pid() {
    if alive "$1" "$2"; then
        local pid
        pid=$(cat "$1"); kill "$pid"
        for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
        [ -d "/proc/$pid" ] && kill -9 "$pid"
        say "stopped $2 (pid $pid)"
    fi
    rm -f "$1"
}
case "$ACTION" in
    status) for n in $NODES; do alive "$VAR/slurmd.$n.pid" slurmd && say "slurmd $n running" || say "slurmd $n not running"; done
            alive "$VAR/slurmctld.pid" slurmctld && { say "slurmctld running"; sinfo -N; squeue; } || say "slurmctld not running"
            exit 0 ;;
    stop)   for n in $NODES; do stop_pid "$VAR/slurmd.$n.pid" slurmd; done
            stop_pid "$VAR/slurmctld.pid" slurmctld
            exit 0 ;;
    start) ;;
    *) die "unknown action '$ACTION' (start, stop or status)" ;;
esac
command -v slurmd >/dev/null && command -v munged >/dev/null || die "install slurm-wlm and munge first (sudo bash jobs/local-slurm.sh does)"
host=$(hostname -s)
mkdir -p "$DIR" "$VAR/state" "$VAR/spool" "$VAR/log"
chown slurm "$VAR/state" "$VAR/log" 2>/dev/null || true
user=root; id slurm >/dev/null 2>&1 && user=slurm
cat > "$CONF.new" <<EOF
# written by mpidist jobs/local-slurm-two-nodes.sh: two emulated nodes on $host, for tests
ClusterName=mpidist-two-nodes
SlurmctldHost=$host
SlurmctldPort=6917
SlurmUser=$user
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmctldPidFile=$VAR/slurmctld.pid
SlurmdPidFile=$VAR/slurmd.%n.pid
SlurmdSpoolDir=$VAR/spool/%n
StateSaveLocation=$VAR/state
SlurmctldLogFile=$VAR/log/slurmctld.log
SlurmdLogFile=$VAR/log/slurmd.%n.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=3600
KillWait=30
InactiveLimit=0
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=17001 CPUs=$CPUS RealMemory=4000 State=UNKNOWN
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=17002 CPUs=$CPUS RealMemory=4000 State=UNKNOWN
PartitionName=two Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
if ! cmp -s "$CONF.new" "$CONF"; then
    mv "$CONF.new" "$CONF"; chmod 0644 "$CONF"
    for n in $NODES; do stop_pid "$VAR/slurmd.$n.pid" slurmd; done
    stop_pid "$VAR/slurmctld.pid" slurmctld
    say "wrote $CONF"
else
    rm -f "$CONF.new"
fi
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    [ -s /etc/munge/munge.key ] || die "no munge key: run jobs/local-slurm.sh once"
    runuser -u munge -- munged; sleep 1
fi
alive "$VAR/slurmctld.pid" slurmctld || { say "starting slurmctld"; slurmctld -f "$CONF"; }
for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.2; done
scontrol ping | grep -q UP || die "slurmctld does not answer (see $VAR/log/slurmctld.log)"
for n in $NODES; do
    alive "$VAR/slurmd.$n.pid" slurmd || { say "starting slurmd -N $n"; slurmd -f "$CONF" -N "$n"; }
done
for _ in $(seq 150); do
    [ "$(sinfo -h -N -o %T | grep -c -E '^(idle|mixed|allocated)')" = 2 ] && break
    sleep 0.2
done
sinfo -N
[ "$(sinfo -h -N -o %T | grep -c -E '^(idle|mixed|allocated)')" = 2 ] || die "the two nodes are not both up (see $VAR/log/)"
say "ready: export SLURM_CONF=$CONF"
