#!/usr/bin/env bash
# A throwaway SLURM cluster on this machine, for the SLURM tests (tests/test_slurm.py) and CI:
# munged, slurmctld and two slurmd playing two virtual nodes n1 and n2 (same address
# 127.0.0.1, own ports and spool folders, each with the machine's CPUs, its memory less
# headroom and $GPUS_PER_NODE fake GPUs: gres.conf File= entries, character devices or empty
# files).
# No accounting (no slurmdbd), no systemd, no cgroups (proctrack/linuxproc, task/none).
#
#   tests/slurm/cluster.sh start    install slurm-wlm + munge with apt-get if missing, write
#                                   /etc/slurm/{slurm,gres}.conf, start the daemons, wait for
#                                   both nodes to be idle; exit 1 with the daemons' logs if not
#                                   (exit 3: it is already running, left as it is)
#   tests/slurm/cluster.sh stop     stop the daemons it started, remove its files
#   tests/slurm/cluster.sh status   sinfo
#
# Daemons, logs and state live under $SLURM_CI_DIR (default /tmp/slurm-ci). It refuses to touch
# an /etc/slurm/slurm.conf it did not write (a real cluster's configuration).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # slurmctld, slurmd, munged live there

STATE=${SLURM_CI_DIR:-/tmp/slurm-ci}
CONF=/etc/slurm/slurm.conf
GRES=/etc/slurm/gres.conf
MARK="# written by tests/slurm/cluster.sh"
NODES=(n1 n2)
GPUS_PER_NODE=${GPUS_PER_NODE:-2}
HEADROOM_MB=${HEADROOM_MB:-1024}
START_TIMEOUT=${START_TIMEOUT:-60}

die() {
    echo "cluster.sh: $*" >&2
    exit 1
}

ensure_packages() {
    local missing=()
    for bin in slurmctld slurmd sbatch munged; do
        command -v "$bin" >/dev/null || missing+=("$bin")
    done
    [[ ${#missing[@]} -eq 0 ]] && return
    [[ $(id -u) -eq 0 ]] || die "missing ${missing[*]} and not root: install slurm-wlm and munge"
    echo "cluster.sh: installing slurm-wlm and munge (missing: ${missing[*]})" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurm-wlm slurmctld slurmd slurm-client munge >/dev/null
}

# A fake GPU device file: a character device with /dev/null's numbers where mknod is allowed
# (then SLURM also sets CUDA_VISIBLE_DEVICES), else an empty file (GRES still allocated).
fake_gpu() { mknod "$1" c 1 3 2>/dev/null || : >"$1"; }

ours() { [[ -f $1 ]] && head -n 1 "$1" | grep -qxF "$MARK"; }

write_config() {
    local host cpus mem
    host=$(hostname -s)
    # slurmd -C: "NodeName=vm CPUs=2 Boards=1 ... RealMemory=24105"
    read -r cpus mem < <(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*RealMemory=\([0-9]*\).*/\1 \2/p')
    [[ -n ${cpus:-} && -n ${mem:-} ]] || die "could not read CPUs/RealMemory from 'slurmd -C'"
    mem=$((mem > 2 * HEADROOM_MB ? mem - HEADROOM_MB : mem / 2))
    if [[ -e $CONF ]] && ! ours "$CONF"; then
        die "$CONF exists and was not written by this script; not touching a real cluster"
    fi
    mkdir -p /etc/slurm "$STATE"/{ctld,log,run,dev}
    {
        echo "$MARK"
        cat <<EOF
ClusterName=ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdSpoolDir=$STATE/spool/%n
SlurmdPidFile=$STATE/run/slurmd.%n.pid
SlurmdLogFile=$STATE/log/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
GresTypes=gpu
ReturnToService=2
MinJobAge=300
KillWait=30
InactiveLimit=0
EOF
        local port=17001
        for node in "${NODES[@]}"; do
            echo "NodeName=$node NodeAddr=127.0.0.1 NodeHostname=$host Port=$port CPUs=$cpus RealMemory=$mem Gres=gpu:$GPUS_PER_NODE State=UNKNOWN"
            port=$((port + 1))
        done
        echo "PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP"
    } >"$CONF"
    {
        echo "$MARK"
        echo "AutoDetect=off"
        for node in "${NODES[@]}"; do
            mkdir -p "$STATE/dev/$node"
            for ((i = 0; i < GPUS_PER_NODE; i++)); do fake_gpu "$STATE/dev/$node/gpu$i"; done
            echo "NodeName=$node Name=gpu File=$STATE/dev/$node/gpu[0-$((GPUS_PER_NODE - 1))]"
        done
    } >"$GRES"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        return  # a munged is already serving
    fi
    [[ -s /etc/munge/munge.key ]] || { mungekey --create 2>/dev/null || /usr/sbin/mungekey --create; }
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged --force
    echo started >"$STATE/run/munged.ours"
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.1
    done
    die "munged does not answer (see /var/log/munge/munged.log)"
}

logs() {
    for f in "$STATE"/log/*.log /var/log/munge/munged.log; do
        [[ -f $f ]] && { echo "== $f"; tail -n 25 "$f"; }
    done
}

start() {
    local t0=$SECONDS
    ensure_packages
    if [[ -f $STATE/run/slurmctld.pid ]] && kill -0 "$(cat "$STATE/run/slurmctld.pid")" 2>/dev/null; then
        echo "cluster.sh: already running (state in $STATE)"
        exit 3
    fi
    rm -rf "$STATE/ctld" "$STATE/spool" "$STATE/log"
    write_config
    start_munge
    slurmctld -i || { logs >&2; die "slurmctld did not start"; }
    for node in "${NODES[@]}"; do
        mkdir -p "$STATE/spool/$node"
        slurmd -N "$node" || { logs >&2; die "slurmd -N $node did not start"; }
    done
    local state=""
    for _ in $(seq $((START_TIMEOUT * 2))); do
        state=$(sinfo -h -N -o '%N %T' 2>/dev/null | sort -u | tr '\n' ' ')
        if [[ $(grep -o idle <<<"$state" | wc -l) -eq ${#NODES[@]} ]]; then
            echo "cluster.sh: SLURM up in $((SECONDS - t0)) s: $state"
            return
        fi
        sleep 0.5
    done
    logs >&2
    die "nodes not idle after ${START_TIMEOUT} s: ${state:-no answer from slurmctld}"
}

stop_pid() {
    local pidfile=$1 pid
    [[ -f $pidfile ]] || return 0
    pid=$(cat "$pidfile")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
    fi
    rm -f "$pidfile"
}

stop() {
    if command -v scancel >/dev/null && [[ -f $STATE/run/slurmctld.pid ]]; then
        scancel --user="$(id -un)" 2>/dev/null || true
    fi
    for node in "${NODES[@]}"; do stop_pid "$STATE/run/slurmd.$node.pid"; done
    stop_pid "$STATE/run/slurmctld.pid"
    if [[ -f $STATE/run/munged.ours ]]; then
        stop_pid /run/munge/munged.pid
    fi
    for f in "$CONF" "$GRES"; do ours "$f" && rm -f "$f"; done
    rm -rf "$STATE"
    echo "cluster.sh: stopped"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) sinfo ;;
*) die "usage: $0 start|stop|status" ;;
esac
