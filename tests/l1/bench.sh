#!/bin/sh
# `make bench`'s L1 section, run inside the L1 VM (scripts/bench.py sends it through myvm-l1):
# builtin VMM vs QEMU with KVM vs runc, side by side on one nested-KVM node. Prints
# `BENCH <key> <value>` lines: medians of RUNS runs (default 3).
#   boot_ms_<backend>      `myvm boot --json`: VMM start -> agent READY
#   ctr_run_s_<runtime>    `ctr run --rm true`, runs alternated
#   vmm_rss_mib_<backend>  VmRSS of the VMM of an idle pod (guest RAM it touched included)
#   pod_pss_mib_<backend>  PSS of the shim and everything under it (VMM, daemons), same pod
#   fpr_{idle,holding,freed}_mib_<backend>  PSS of a 1 GiB pod idle, holding 400 MiB, 10 s after
#                          freeing it (free page reporting)
set -eu
runs=${1:-3}
now() { cut -d' ' -f1 /proc/uptime; }
# median KEY: the median of the numbers on stdin as a BENCH line; nothing if there are none.
median() { sort -n | awk -v k="$1" '/^[0-9.]+$/ {v[++n] = $1} END {if (n) print "BENCH " k " " v[int((n + 1) / 2)]}'; }
sed 's/^backend = .*/backend = "builtin"/' /etc/myvm/config.toml > /etc/myvm/builtin.toml
sed 's/^backend = .*/backend = "qemu"/' /etc/myvm/config.toml > /etc/myvm/qemu.toml

for b in builtin qemu; do
    for i in $(seq "$runs"); do
        myvm boot --backend "$b" --json | sed -n 's/.*"boot_to_agent_ready_ms": *\([0-9.]*\).*/\1/p'
    done | median "boot_ms_$b"
done

for b in builtin qemu; do
    MYVM_CONFIG=/etc/myvm/$b.toml /opt/myvm-tests/containerd-private.sh start /tmp/bench-$b > /dev/null
    ctr -a /tmp/bench-$b/containerd.sock images import /opt/images/busybox.tar > /dev/null
done
trap 'for b in builtin qemu; do /opt/myvm-tests/containerd-private.sh stop /tmp/bench-$b; done' EXIT

run() { # run SOCKDIR RUNTIME NAME: seconds of one `ctr run --rm true` ("failed" if it fails)
    t=$(now)
    if ctr -a "$1/containerd.sock" run --rm --null-io --runtime "$2" localhost/busybox:latest "$3" true >&2; then
        echo "$(now) $t" | awk '{printf "%.2f\n", $1 - $2}'
    else
        echo failed
    fi
}
: > /tmp/bench-runs
for i in $(seq "$runs"); do
    echo "builtin $(run /tmp/bench-builtin io.containerd.myvm.v2 b$i)" >> /tmp/bench-runs
    echo "qemu $(run /tmp/bench-qemu io.containerd.myvm.v2 q$i)" >> /tmp/bench-runs
    echo "runc $(run /tmp/bench-builtin io.containerd.runc.v2 r$i)" >> /tmp/bench-runs
done
for rt in builtin qemu runc; do
    awk -v rt=$rt '$1 == rt {print $2}' /tmp/bench-runs | median "ctr_run_s_$rt"
done

pss_kib() { awk '/^Pss:/ {s += $2} END {print s + 0}' /proc/$1/smaps_rollup 2>/dev/null || echo 0; }
tree() { # tree PID: PID and its descendants (L1's kernel has no /proc/<pid>/task/*/children)
    ps -o pid,ppid | awk -v root="$1" 'NR > 1 {parent[$1] = $2}
        END {for (p in parent) for (q = p; q != ""; q = parent[q]) if (q == root) {print p; break}}'
}
pod_pss_mib() { # pod_pss_mib SOCKDIR: PSS of that containerd's myvm shim and its children
    shim=$(ps -o pid,args | awk -v d="$1" '/containerd-shim-myvm-v2/ && $0 ~ d && !/awk/ {print $1}' | head -1)
    pss=0
    for p in $(tree "$shim"); do pss=$((pss + $(pss_kib "$p"))); done
    echo $pss | awk '{printf "%.1f", $1 / 1024}'
}
for b in builtin qemu; do
    ctr -a /tmp/bench-$b/containerd.sock run -d --null-io --runtime io.containerd.myvm.v2 localhost/busybox:latest idle sleep 1000
    sleep 3
    if [ $b = builtin ]; then vmm=$(pidof myvm-vmm); else vmm=$(pidof qemu-system-x86_64); fi
    if [ -n "$vmm" ]; then
        echo "BENCH vmm_rss_mib_$b $(awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' /proc/$vmm/status)"
        echo "BENCH pod_pss_mib_$b $(pod_pss_mib /tmp/bench-$b)"
    fi
    ctr -a /tmp/bench-$b/containerd.sock task rm -f idle > /dev/null 2>&1 || true
    ctr -a /tmp/bench-$b/containerd.sock container rm idle || true
done

# Memory given back (free page reporting): a 1 GiB pod's PSS idle, holding 400 MiB in a tmpfs,
# and 10 s after freeing it.
for b in builtin qemu; do
    c="ctr -a /tmp/bench-$b/containerd.sock"
    $c run -d --null-io --runtime io.containerd.myvm.v2 --memory-limit 1073741824 \
        --mount type=tmpfs,src=none,dst=/big,options=size=600m localhost/busybox:latest fpr sleep 1000
    sleep 3
    echo "BENCH fpr_idle_mib_$b $(pod_pss_mib /tmp/bench-$b)"
    $c task exec --exec-id fill fpr dd if=/dev/zero of=/big/f bs=1M count=400 2>/dev/null
    echo "BENCH fpr_holding_mib_$b $(pod_pss_mib /tmp/bench-$b)"
    $c task exec --exec-id free fpr rm /big/f
    sleep 10
    echo "BENCH fpr_freed_mib_$b $(pod_pss_mib /tmp/bench-$b)"
    $c task rm -f fpr > /dev/null 2>&1 || true
    $c container rm fpr || true
done
