#!/usr/bin/env bash
# A single-node SLURM cluster on localhost for tests: munge + slurmctld + slurmd, one CPU-only
# node with a fake "gpu" GRES so that rules declaring gpu=1 can be scheduled.
#   bash scripts/slurm_local.sh install|start|stop|status
# Needs root and Debian's slurm-wlm and munge (the install step runs apt-get).
set -euo pipefail
NODE="$(hostname -s)"
CPUS="$(nproc)"
MEM_MB="$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))"
STATE=/var/lib/clsbench-slurm

case "${1:-start}" in
install)
  command -v slurmctld >/dev/null && command -v munged >/dev/null || {
    apt-get install -y slurm-wlm munge >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y slurm-wlm munge >/dev/null; }
  }
  ;;
start)
  mkdir -p /etc/slurm "$STATE"/{ctld,d} /run/munge /var/log/slurm
  cat > /etc/slurm/slurm.conf <<CONF
ClusterName=clsbench
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
StateSaveLocation=${STATE}/ctld
SlurmdSpoolDir=${STATE}/d
SlurmctldPidFile=${STATE}/slurmctld.pid
SlurmdPidFile=${STATE}/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM_MB} Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=${NODE} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=${NODE} MaxTime=INFINITE State=UP
CONF
  echo "NodeName=${NODE} Name=gpu File=/dev/null" > /etc/slurm/gres.conf  # a fake device: jobs see no GPU
  [ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null; }
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  pgrep -x munged >/dev/null || runuser -u munge -- munged
  pgrep -x slurmctld >/dev/null || slurmctld
  pgrep -x slurmd >/dev/null || slurmd
  for _ in $(seq 1 30); do
    sinfo -h -o "%t" 2>/dev/null | grep -qE "^idle" && { sinfo; exit 0; }
    scontrol update nodename="${NODE}" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  echo "the SLURM node did not become idle" >&2; sinfo >&2 || true; tail -5 /var/log/slurm/slurmctld.log >&2 || true; exit 1
  ;;
stop)
  pkill -x slurmd || true; pkill -x slurmctld || true; pkill -x munged || true
  ;;
status)
  sinfo; squeue
  ;;
esac
