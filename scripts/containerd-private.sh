#!/usr/bin/env bash
# Starts (or stops) a private containerd whose root, state and sockets live under DIR, with the
# myvm runtime configured for CRI as handler `myvm`. Used by the tests, the demo and the benchmark.
#   containerd-private.sh start DIR   -> prints the socket path once containerd answers
#   containerd-private.sh stop DIR
#   containerd-private.sh restart DIR -> containerd only (shims and their tasks keep running)
set -euo pipefail
cmd=$1 dir=$2
stop_containerd() {
    if [ -f "$dir/containerd.pid" ]; then
        pid=$(cat "$dir/containerd.pid")
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$dir/containerd.pid"
    fi
}

case "$cmd" in
restart)
    stop_containerd
    exec "$0" start "$dir"
    ;;
start)
    mkdir -p "$dir/root" "$dir/state" "$dir/cni"
    # A pod network private to this containerd: its own bridge, subnet and IPAM store, all on
    # this machine (no masquerading, no route off the host). Picked from DIR so that several
    # private containerds can run side by side.
    h=$(printf '%s' "$dir" | cksum | cut -d' ' -f1)
    bridge="myvm$(printf '%x' $((h % 0xfffff)))"
    subnet="10.250.$((h % 250)).0/24"
    echo "$bridge" > "$dir/cni-bridge"
    cat > "$dir/cni/10-myvm.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "myvm-$bridge",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni-ipam",
        "ranges": [[{"subnet": "$subnet"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
JSON
    cat > "$dir/config.toml" <<TOML
version = 2
root = "$dir/root"
state = "$dir/state"
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:latest"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.myvm]
      runtime_type = "io.containerd.myvm.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni"
TOML
    containerd --config "$dir/config.toml" >> "$dir/containerd.log" 2>&1 &
    echo $! > "$dir/containerd.pid"
    for _ in $(seq 1 100); do
        if ctr -a "$dir/containerd.sock" version >/dev/null 2>&1; then
            echo "$dir/containerd.sock"
            exit 0
        fi
        sleep 0.1
    done
    echo "containerd did not start; log:" >&2
    tail -20 "$dir/containerd.log" >&2
    exit 1
    ;;
stop)
    stop_containerd
    if [ -f "$dir/cni-bridge" ]; then
        ip link del "$(cat "$dir/cni-bridge")" 2>/dev/null || true
    fi
    # containerd leaves its root mounted in places (shm, sandboxes): unmount what is below DIR.
    { grep -o " $dir/[^ ]*" /proc/self/mounts || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    ;;
*) echo "usage: $0 start|stop|restart DIR" >&2; exit 2 ;;
esac
