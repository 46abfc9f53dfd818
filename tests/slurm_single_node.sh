#!/bin/bash
# A single-node Slurm cluster on this machine, for tests/test_launch.py's sbatch test:
#   apt-get install -y slurm-wlm && . tests/slurm_single_node.sh && pytest tests/test_launch.py
# As root (the daemons run as root), from Debian 12's slurm-wlm 22.05; state under $DIR.
# Sourcing it exports SLURM_CONF, which sbatch and sinfo need.
set -e
DIR=${SLURM_TEST_DIR:-/tmp/hollowbench-slurm}
HOST=$(hostname)
mkdir -p "$DIR/state" "$DIR/spool"
cat > "$DIR/slurm.conf" <<CONF
ClusterName=hollowbench
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
# No cgroups in a container: track processes by their parent, bind no CPUs.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$HOST CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$DIR/slurm.conf
pgrep -x munged > /dev/null || munged --force
pgrep -x slurmctld > /dev/null || slurmctld -f "$SLURM_CONF"
pgrep -x slurmd > /dev/null || slurmd -f "$SLURM_CONF"
for _ in $(seq 30); do sinfo > /dev/null 2>&1 && break; sleep 1; done
sinfo
set +e
