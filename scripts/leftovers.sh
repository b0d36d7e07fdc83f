#!/usr/bin/env bash
# The cleanup check of `make test`: after the suite, nothing of myvm may be left on the host.
#   leftovers.sh snapshot FILE   records what is there before the suite (shared host paths)
#   leftovers.sh check FILE      fails, listing them, if processes, mounts, sockets, network
#                                devices, run or temp directories were left behind
set -uo pipefail
cmd=$1 file=$2

shared_state() {
    # Paths other software shares with us: compare with the snapshot, not with "empty".
    ls -1 /run/containerd/s 2>/dev/null | sed 's|^|socket /run/containerd/s/|'
    ls -1 /var/run/netns 2>/dev/null | sed 's|^|netns |'
    ls -1 /run/containerd/fifo 2>/dev/null | sed 's|^|fifo /run/containerd/fifo/|'
}

case "$cmd" in
snapshot) shared_state > "$file" ;;
check)
    left=()
    while read -r pid exe; do
        left+=("process $pid $exe")
    done < <(ps -eo pid=,args= | awk '$2 ~ /(containerd-shim-myvm-v2|qemu-system-x86_64|myvm-vmm|vhost-device-vsock|virtiofsd)$/ ||
                                       ($2 ~ /containerd$/ && $0 ~ /myvm-containerd-/) {print $1, $2}')
    while read -r m; do left+=("mount $m"); done < <(awk '$2 ~ /^\/run\/myvm|\/myvm-/ {print $2}' /proc/self/mounts)
    for d in /run/myvm/sandboxes/*/* /run/myvm/shared/*/*; do
        [ -e "$d" ] && left+=("directory $d")
    done
    for d in /sys/fs/cgroup/myvm/* /sys/fs/cgroup/*/myvm/*; do
        [ -d "$d" ] && left+=("cgroup $d")
    done
    for d in "${TMPDIR:-/tmp}"/myvm-*; do
        [ -e "$d" ] && left+=("temp $d")
    done
    while read -r l; do left+=("link $l"); done < <(ip -o link show 2>/dev/null | awk -F': ' '$2 ~ /^myvm/ {print $2}')
    while read -r l; do left+=("$l"); done < <(comm -13 <(sort "$file") <(shared_state | sort))
    if [ ${#left[@]} -gt 0 ]; then
        echo "leftovers after the test suite:" >&2
        printf '  %s\n' "${left[@]}" >&2
        exit 1
    fi
    echo "leftovers: none (no myvm process, mount, socket, network device or directory left)"
    ;;
*) echo "usage: $0 snapshot|check FILE" >&2; exit 2 ;;
esac
