#!/usr/bin/env bash
# The demo: a private containerd with the myvm shim runs a busybox container in a microVM.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d /tmp/myvm-demo.XXXXXX)
cleanup() {
    ctr -a "$dir/containerd.sock" task kill -s KILL demo >/dev/null 2>&1 || true
    "$root/scripts/containerd-private.sh" stop "$dir" || true
    pkill -9 -f "containerd-shim-myvm-v2.*$dir" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
export PATH="$root/target/release:$PATH"
"$root/scripts/containerd-private.sh" start "$dir" >/dev/null
python3 "$root/scripts/mkimage.py" --name localhost/busybox:latest -o "$dir/busybox.tar"
ctr -a "$dir/containerd.sock" images import "$dir/busybox.tar" >/dev/null
echo "host kernel: $(uname -r)"
set -x
time ctr -a "$dir/containerd.sock" run --rm --runtime io.containerd.myvm.v2 localhost/busybox:latest demo \
    sh -c 'echo "hello from a myvm microVM"; echo "guest kernel: $(uname -r)"; cat /proc/cpuinfo | grep -m1 "model name"; free -m | head -2'
