#!/usr/bin/env bash
# A throw-away single-node SLURM cluster on localhost, for the tests in tests/test_slurm.py.
#
#   tests/slurm/slurm-localhost.sh start    install (if needed), configure, start, wait for the node
#   tests/slurm/slurm-localhost.sh stop     cancel its jobs, stop the daemons that 'start' started
#   tests/slurm/slurm-localhost.sh status   print the node and the queue
#
# Runs as root on Debian 12 (packages munge, slurmctld, slurmd, slurm-client; SLURM 22.05).
# Made for CI: a fresh machine that reaches only package registries. Every wait has a limit,
# so a broken set-up fails with the daemons' log tails instead of hanging.
#
# Environment:
#   FAKE_GPUS=N        GPUs to declare (default 1), backed by /dev/null: jobs asking for
#                      --gpus=1 or --gres=gpu:1 are scheduled (and see CUDA_VISIBLE_DEVICES=0)
#                      but there is no real GPU, so the code falls back to the CPU.
#   APT_TIMEOUT=S      limit per apt-get call in seconds (default 600)
#   READY_TIMEOUT=S    limit for munge/slurmctld/node readiness in seconds (default 90)
#   SLURM_LOCALHOST_FORCE=1  overwrite an /etc/slurm/slurm.conf this script did not write
#
# Exit status: 0 ready; 2 cannot run here (not root, no apt, a foreign SLURM set-up);
# 1 anything else (install or start failed; the reason and log tails go to stderr).
#
# What it configures, and why (facts from trying SLURM 22.05 on this machine type):
# * No slurmdbd: `sacct` does not work, so the Snakemake SLURM plugin must be run with
#   `--slurm-status-command squeue`; MinJobAge keeps finished jobs visible to squeue
#   (the plugin wants MinJobAge >= 3x its first status-check delay; 1 h here, so that tests
#   can also read finished jobs' records with scontrol).
# * No cgroups (containers): proctrack/linuxproc, task/none. Memory is enforced by
#   jobacct_gather/linux sampling every second with OverMemoryKill: a job whose processes
#   together exceed --mem is killed (job state FAILED, "exceeded memory limit" in its log),
#   as cgroups would do on a real cluster (there: state OUT_OF_MEMORY).
# * GresTypes=gpu with FAKE_GPUS File=/dev/null entries (slurmd drops file-less GPUs).
# * KillWait=5: a cancelled job gets SIGKILL 5 s after SIGTERM (default 30), to keep tests short.
set -euo pipefail

ACTION=${1:-start}
FAKE_GPUS=${FAKE_GPUS:-1}
APT_TIMEOUT=${APT_TIMEOUT:-600}
READY_TIMEOUT=${READY_TIMEOUT:-90}
MARKER="# written by snakescope tests/slurm/slurm-localhost.sh"
CONF=/etc/slurm/slurm.conf
STATE=/run/snakescope-slurm        # what 'start' started (so 'stop' ends only that)
PKGS="munge slurmctld slurmd slurm-client"
export DEBIAN_FRONTEND=noninteractive

say() { echo "slurm-localhost: $*" >&2; }
cannot() { say "cannot run here: $*"; exit 2; }
die() {
  say "$*"
  for f in /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log /var/log/munge/munged.log; do
    [ -s "$f" ] && { echo "--- tail $f" >&2; tail -n 15 "$f" >&2; }
  done
  exit 1
}
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
# wait_for SECONDS CMD...: poll CMD every 0.5 s until it succeeds or the time is up
wait_for() {
  local limit=$1; shift
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -ge "$deadline" ] && return 1
    sleep 0.5
  done
}
stop_pidfile() {   # end the process whose PID is in $1 (TERM, then KILL after 10 s)
  local f=$1 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}
ours() { [ -f "$CONF" ] && head -n 1 "$CONF" | grep -qxF "$MARKER"; }

case "$ACTION" in
  start | stop | status) ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 64 ;;
esac
[ "$(id -u)" = 0 ] || cannot "must run as root (it installs packages and starts daemons)"

if [ "$ACTION" = status ]; then
  sinfo -o "%P %a %t %c %m %G" && squeue
  exit
fi

if [ "$ACTION" = stop ]; then
  if ours && alive /run/slurmctld.pid; then
    # cancel what is left (the tests do this too) and give the jobs a moment to end
    timeout 20 scancel --full --quiet --user=root 2>/dev/null || true
    squeue -h -o %i 2>/dev/null | xargs -r timeout 20 scancel 2>/dev/null || true
    for _ in $(seq 30); do
      [ -z "$(squeue -h -t R,CG,PD -o %i 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
  stop_pidfile /run/slurmd.pid
  stop_pidfile /run/slurmctld.pid
  if [ -f "$STATE/munged" ]; then
    stop_pidfile /run/munge/munged.pid
    rm -f "$STATE/munged"
  fi
  exit 0
fi

# ---- start --------------------------------------------------------------------------------
if [ -f "$CONF" ] && ! ours && [ "${SLURM_LOCALHOST_FORCE:-0}" != 1 ]; then
  cannot "$CONF exists and was not written by this script (a real SLURM set-up?); set SLURM_LOCALHOST_FORCE=1 to replace it"
fi

# 1. packages. No daemon may be auto-started by the packages' scripts (on a systemd host
#    slurmctld would start with a missing config): a temporary policy-rc.d says no.
# shellcheck disable=SC2086
if ! dpkg -s $PKGS >/dev/null 2>&1; then
  command -v apt-get >/dev/null || cannot "SLURM is not installed and there is no apt-get"
  apt() { timeout "$APT_TIMEOUT" apt-get -q -y -o DPkg::Lock::Timeout=120 "$@"; }
  made_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  trap '[ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
  # a fresh machine has no package lists; otherwise try the lists first, update on failure
  if ! compgen -G "/var/lib/apt/lists/*_Packages" >/dev/null; then
    apt update >&2 || die "apt-get update failed"
  fi
  # shellcheck disable=SC2086
  if ! apt install --no-install-recommends $PKGS >&2; then
    say "install failed; updating the package lists and trying again"
    apt update >&2 || die "apt-get update failed"
    # shellcheck disable=SC2086
    apt install --no-install-recommends $PKGS >&2 || die "apt-get install $PKGS failed"
  fi
  [ "$made_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
  trap - EXIT
fi
mkdir -p "$STATE"

# 2. munge (Debian's postinst creates /etc/munge/munge.key; a systemd host may run munged)
munge_ok() { munge -n | unmunge; }
[ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
if ! munge_ok >/dev/null 2>&1; then
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged || die "munged did not start"
  touch "$STATE/munged"
  wait_for "$READY_TIMEOUT" munge_ok || die "munge does not answer"
fi

# 3. slurm.conf for one node = this machine
install -d -o slurm -g slurm /var/lib/slurm/slurmctld /var/log/slurm
install -d /var/lib/slurm/slurmd
HOST=$(hostname -s)
HW=$(timeout 60 /usr/sbin/slurmd -C | head -n 1)   # NodeName=.. CPUs=.. Boards=.. RealMemory=..
CPU_TOPO=$(sed -E 's/^NodeName=[^ ]+ //; s/ RealMemory=[0-9]+//' <<<"$HW")
MEM=$(( $(sed -nE 's/.*RealMemory=([0-9]+).*/\1/p' <<<"$HW") * 90 / 100 ))  # a bit under real
GRES_TYPES=""; GRES_NODE=""; GRES_CONF=""
if [ "$FAKE_GPUS" -gt 0 ]; then
  GRES_TYPES="GresTypes=gpu"; GRES_NODE="Gres=gpu:${FAKE_GPUS}"
  for _ in $(seq "$FAKE_GPUS"); do GRES_CONF+="NodeName=${HOST} Name=gpu File=/dev/null"$'\n'; done
fi
NEW=$(mktemp)
trap 'rm -f "$NEW"' EXIT
cat > "$NEW" <<EOF
${MARKER}
ClusterName=localhost
SlurmctldHost=${HOST}(127.0.0.1)
AuthType=auth/munge
CredType=cred/munge
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# no cgroups in containers
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
# finished jobs stay visible to squeue/scontrol for an hour: the plugin's squeue status mode
# needs >= 3x its first status-check delay, the tests read finished jobs' records
MinJobAge=3600
KillWait=5
JobCompType=jobcomp/none
# no slurmdbd; memory enforced by sampling (no cgroups): see the header
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=1
JobAcctGatherParams=OverMemoryKill
${GRES_TYPES}
NodeName=${HOST} NodeAddr=127.0.0.1 ${CPU_TOPO} RealMemory=${MEM} ${GRES_NODE} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

changed=0
cmp -s "$NEW" "$CONF" || changed=1
[ "$(printf '%s' "$GRES_CONF")" = "$(cat /etc/slurm/gres.conf 2>/dev/null)" ] || changed=1
if [ "$changed" = 1 ]; then
  install -m 0644 "$NEW" "$CONF"
  if [ -n "$GRES_CONF" ]; then printf '%s' "$GRES_CONF" > /etc/slurm/gres.conf; else rm -f /etc/slurm/gres.conf; fi
fi

# 4. controller + node daemon (they daemonize; PID files in /run). Restarted when the
#    config changed (node/GRES changes are not picked up by 'scontrol reconfigure').
if [ "$changed" = 1 ] || ! alive /run/slurmctld.pid || ! alive /run/slurmd.pid; then
  stop_pidfile /run/slurmd.pid
  stop_pidfile /run/slurmctld.pid
  /usr/sbin/slurmctld || die "slurmctld did not start"
  wait_for "$READY_TIMEOUT" scontrol ping || die "slurmctld does not answer"
  /usr/sbin/slurmd || die "slurmd did not start"
fi

# 5. wait until the node is usable (resume it if an earlier config left it drained/invalid)
deadline=$((SECONDS + READY_TIMEOUT))
while :; do
  state=$(timeout 10 sinfo -h -n "$HOST" -o %t 2>/dev/null || true)
  case "$state" in
    idle | mix | alloc) break ;;
    drain* | drng | inval | down*) timeout 10 scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
  esac
  [ "$SECONDS" -ge "$deadline" ] && die "SLURM node not ready after ${READY_TIMEOUT}s (state='$state')"
  sleep 0.5
done
sinfo -o "%P %a %t %c %m %G"
