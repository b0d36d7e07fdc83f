#!/bin/sh
# `make bench`'s L1 section, run inside the L1 VM (scripts/bench.py sends it through myvm-l1):
# builtin VMM vs QEMU with KVM vs runc, side by side on one nested-KVM node. Prints
# `BENCH <key> <value>` lines: medians of RUNS runs (default 3).
#   boot_ms_<backend>      `myvm boot --json`: VMM start -> agent READY
#   ctr_run_s_<runtime>    `ctr run --rm true`, runs alternated
#   vmm_rss_mib_<backend>  VmRSS of the VMM of an idle pod (guest RAM it touched included)
#   pod_pss_mib_<backend>  PSS of the shim and everything under it (VMM, daemons), same pod
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
for b in builtin qemu; do
    ctr -a /tmp/bench-$b/containerd.sock run -d --null-io --runtime io.containerd.myvm.v2 localhost/busybox:latest idle sleep 1000
    sleep 3
    shim=$(ps -o pid,args | awk -v d=/tmp/bench-$b '/containerd-shim-myvm-v2/ && $0 ~ d && !/awk/ {print $1}' | head -1)
    pss=0
    for p in $(tree "$shim"); do pss=$((pss + $(pss_kib "$p"))); done
    if [ $b = builtin ]; then vmm=$(pidof myvm-vmm); else vmm=$(pidof qemu-system-x86_64); fi
    if [ -n "$vmm" ]; then
        echo "BENCH vmm_rss_mib_$b $(awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' /proc/$vmm/status)"
        echo "BENCH pod_pss_mib_$b $(echo $pss | awk '{printf "%.1f", $1 / 1024}')"
    fi
    ctr -a /tmp/bench-$b/containerd.sock task rm -f idle > /dev/null 2>&1 || true
    ctr -a /tmp/bench-$b/containerd.sock container rm idle || true
done
