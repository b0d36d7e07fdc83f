#!/usr/bin/env bash
# The cleanup check of `make test`: after the suite, nothing of myvm may be left on the host.
#   leftovers.sh snapshot FILE   records what is there before the suite
#   leftovers.sh check FILE      fails, listing them, if processes, mounts, sockets, network
#                                devices, run or temp directories appeared during the suite
# Only what appeared since the snapshot counts: what an earlier, interrupted run (or other
# software sharing /run/containerd) left is reported, but it is not this suite's leftover.
set -uo pipefail
cmd=$1 file=$2

state() {
    ps -eo pid=,args= | awk '$2 ~ /(containerd-shim-myvm-v2|qemu-system-x86_64|myvm-vmm|vhost-device-vsock|virtiofsd)$/ ||
                            ($2 ~ /containerd$/ && $0 ~ /myvm-containerd-/) {print "process " $1 " " $2}'
    awk '$2 ~ /^\/run\/myvm|\/myvm-/ {print "mount " $2}' /proc/self/mounts
    for d in /run/myvm/sandboxes/*/* /run/myvm/shared/*/* /run/myvm/volumes/*/*; do
        [ -e "$d" ] && echo "directory $d"
    done
    for d in /sys/fs/cgroup/myvm/* /sys/fs/cgroup/*/myvm/*; do
        [ -d "$d" ] && echo "cgroup $d"
    done
    for d in "${TMPDIR:-/tmp}"/myvm-*; do
        [ -e "$d" ] && echo "temp $d"
    done
    ip -o link show 2>/dev/null | awk -F': ' '$2 ~ /^myvm/ {sub(/@.*/, "", $2); print "link " $2}'
    ls -1 /run/containerd/s 2>/dev/null | sed 's|^|socket /run/containerd/s/|'
    ls -1 /var/run/netns 2>/dev/null | sed 's|^|netns |'
    ls -1 /run/containerd/fifo 2>/dev/null | sed 's|^|fifo /run/containerd/fifo/|'
}

case "$cmd" in
snapshot)
    state | sort > "$file"
    if [ -s "$file" ]; then
        echo "leftovers: already there before the suite (not counted):" >&2
        sed 's/^/  /' "$file" >&2
    fi
    ;;
check)
    [ -r "$file" ] || { echo "leftovers: no snapshot $file (run \`$0 snapshot $file\` first)" >&2; exit 2; }
    mapfile -t left < <(comm -13 "$file" <(state | sort))
    if [ ${#left[@]} -gt 0 ]; then
        echo "leftovers after the test suite:" >&2
        printf '  %s\n' "${left[@]}" >&2
        exit 1
    fi
    echo "leftovers: none (no myvm process, mount, socket, network device or directory left)"
    ;;
*) echo "usage: $0 snapshot|check FILE" >&2; exit 2 ;;
esac
