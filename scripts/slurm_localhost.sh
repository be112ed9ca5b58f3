#!/usr/bin/env bash
# Start a single-node Slurm on this machine (for the integration tests and for trying `dtr suite --launcher slurm`).
#
# Installs Debian's slurm-wlm and munge if missing (needs root and apt), writes /etc/slurm/slurm.conf for
# this machine's cores and memory (one node "localhost", one partition "debug"), starts munged, slurmctld
# and slurmd directly (no systemd, no cgroups needed) and waits until `sinfo` shows the node idle.
# Idempotent: running it again with the daemons up only checks the node. Prints one line on failure.
set -euo pipefail

fail() { echo "slurm_localhost: $*" >&2; exit 1; }
started=$(date +%s)

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    [ "$(id -u)" = 0 ] || fail "slurm-wlm and munge are not installed and this is not root (apt-get install slurm-wlm munge)"
    command -v apt-get >/dev/null || fail "slurm-wlm and munge are not installed and there is no apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || fail "apt-get update failed"
    apt-get install -y -qq slurm-wlm munge >/dev/null || fail "apt-get install slurm-wlm munge failed"
fi

node_idle() { sinfo -h -N -n localhost -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; }
if pgrep -x slurmctld >/dev/null && pgrep -x slurmd >/dev/null && node_idle; then
    echo "slurm_localhost: already up ($(sinfo -h -o '%P %D %T' | head -1))"; exit 0
fi
[ "$(id -u)" = 0 ] || fail "starting the daemons needs root"

cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
host=$(hostname -s)
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/munge /var/lib/munge /var/log/munge
chown -R slurm:slurm /var/spool/slurmctld /var/log/slurm 2>/dev/null || true
cat > /etc/slurm/slurm.conf <<CONF
# written by scripts/slurm_localhost.sh
ClusterName=localhost
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
MinJobAge=3600
KillWait=10
SchedulerParameters=sched_interval=2
NodeName=localhost NodeHostname=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
rm -f /etc/slurm/cgroup.conf  # no cgroup plugin is used (proctrack/linuxproc, task/none)

if ! pgrep -x munged >/dev/null; then
    [ -s /etc/munge/munge.key ] || { mungekey -c -f 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=128 2>/dev/null; }
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged || fail "munged did not start (see /var/log/munge/munged.log)"
fi
munge -n | unmunge >/dev/null 2>&1 || fail "munge does not work (munge -n | unmunge failed)"

pkill_own() { local pidfile=$1; [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true; }
pkill_own /run/slurmctld.pid; pkill_own /run/slurmd.pid
sleep 1
/usr/sbin/slurmctld || fail "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
/usr/sbin/slurmd -N localhost || fail "slurmd did not start (see /var/log/slurm/slurmd.log)"

for _ in $(seq 60); do
    if node_idle; then
        scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
        echo "slurm_localhost: up in $(( $(date +%s) - started ))s ($(sinfo -h -o '%P %D %c cpus %T' | head -1))"
        exit 0
    fi
    state=$(sinfo -h -N -n localhost -o '%T' 2>/dev/null || true)
    case "$state" in down*|drain*|fail*) scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true ;; esac
    sleep 1
done
fail "the node did not become idle in 60s (sinfo: $(sinfo -h -N -o '%N %T %E' 2>&1 | head -1); see /var/log/slurm/)"
