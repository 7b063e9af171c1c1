#!/usr/bin/env bash
# A one-node SLURM cluster on localhost for the cluster path's tests (tests/test_slurm.py):
# installs slurm-wlm and munge when missing, writes a minimal slurm.conf (select/cons_tres,
# proctrack/linuxproc, task/none, root as SlurmUser, no accounting: job states come from squeue and
# clinic's own stage markers), starts munged, slurmctld and slurmd, and waits until the node is idle.
# Idempotent: a cluster already up with this configuration is left as it is; one up with another
# (an older version of this script) is restarted with this one. Needs root (CI runs as root).
#   .ci/slurm-up.sh          # start (prints "slurm: up, node <name>")
#   .ci/slurm-up.sh --down   # stop the three daemons
set -euo pipefail
conf=/etc/slurm/slurm.conf
stop_slurm() { pkill -x slurmd || true; pkill -x slurmctld || true; }
slurm_running() { pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; }
if [ "${1:-}" = "--down" ]; then
  stop_slurm; pkill -x munged || true
  echo "slurm: down"; exit 0
fi
if [ "$(id -u)" != 0 ]; then echo "slurm-up: error: needs root (a one-node test cluster)" >&2; exit 2; fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
fi
node=$(hostname -s)
cpus=$(nproc)
mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
want=$(cat <<CONF
ClusterName=clinic-ci
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job waits cred_expire seconds before it may start again (default 120: tests/test_slurm.py
# requeues one and waited two minutes for it); 10 s is plenty on one node
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MessageTimeout=30
SlurmctldTimeout=60
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=600
KillWait=3
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
)
if [ "$(cat "$conf" 2>/dev/null)" = "$want" ]; then
  if sinfo -h -o %T 2>/dev/null | grep -q idle; then echo "slurm: up, node $node (already)"; exit 0; fi
  # same configuration: whatever daemon is not running starts below
elif slurm_running; then  # up with another configuration
  stop_slurm
  for _ in $(seq 30); do slurm_running || break; sleep 1; done
fi
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /etc/munge
printf '%s\n' "$want" > "$conf"
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || su -s /bin/sh munge -c "/usr/sbin/munged" 2>/dev/null || /usr/sbin/munged --force
pgrep -x slurmctld >/dev/null || slurmctld -i
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 60); do
  state=$(sinfo -h -o %T 2>/dev/null | head -1 || true)
  case "$state" in
    idle*|mixed*|allocated*) echo "slurm: up, node $node ($cpus CPUs, $mem MB)"; exit 0 ;;
    down*|drain*) scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
echo "slurm-up: error: the node did not come up; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
exit 1
