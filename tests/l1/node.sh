#!/bin/sh
# Runs inside the L1 VM (tests/tests/l1.rs sends `sh /opt/myvm-tests/node.sh BACKEND`): a node
# with KVM runs containers on myvm with BACKEND (`auto`, which must pick the builtin VMM here,
# or `qemu`, QEMU with KVM), through a private containerd: ctr run --rm (output, exit code,
# stdin), exec and kill of a detached task, then a CRI pod (myvm-l1-cri), and nothing left after.
set -eu
backend=$1
dir=/tmp/ctd-$backend
t0=$(date +%s)
ok() { echo "ok [$backend +$(( $(date +%s) - t0 ))s]: $*"; }
fail() { echo "FAIL [$backend]: $*"; exit 1; }

if [ "$backend" = auto ]; then
    export MYVM_CONFIG=/etc/myvm/config.toml
    vmm=myvm-vmm
    myvm check | tee /tmp/check.txt
    grep -q "backend (auto): *builtin" /tmp/check.txt || fail "auto does not pick builtin on a host with svm and /dev/kvm"
    ok "myvm check: auto picks builtin"
else
    sed 's/^backend = .*/backend = "qemu"/' /etc/myvm/config.toml > /etc/myvm/qemu.toml
    export MYVM_CONFIG=/etc/myvm/qemu.toml
    vmm=qemu-system-x86_64
fi

/opt/myvm-tests/containerd-private.sh start "$dir" > /dev/null
trap '/opt/myvm-tests/containerd-private.sh stop "$dir"' EXIT
c() { ctr -a "$dir/containerd.sock" "$@"; }
for ns in default k8s.io; do
    for i in /opt/images/*.tar; do c -n "$ns" images import "$i" > /dev/null; done
done
ok "containerd started, images imported"

run="run --runtime io.containerd.myvm.v2 --fifo-dir $dir/fifo"
img=localhost/busybox:latest

# ctr run --rm: output and exit code.
set +e
out=$(c $run --rm $img t1 sh -c 'echo hello-from-$(cat /proc/sys/kernel/random/boot_id); exit 3' 2>&1); rc=$?
set -e
echo "$out"
[ "$rc" = 3 ] || fail "exit code $rc, wanted 3"
guest=$(echo "$out" | sed -n 's/^hello-from-//p')
[ -n "$guest" ] || fail "no output"
[ "$guest" != "$(cat /proc/sys/kernel/random/boot_id)" ] || fail "ran in the node's kernel"
ok "ctr run --rm: output and exit code 3"

# stdin reaches the container.
out=$(echo piped-in | c $run --rm $img t2 cat)
[ "$out" = piped-in ] || fail "stdin: got '$out'"
ok "ctr run --rm: stdin"

# A detached task: exec, the VM is the backend's, kill.
c $run -d $img t3 sleep 3600
pid=$(pidof "$vmm" | cut -d" " -f1)
[ -n "$pid" ] || fail "no $vmm process: $(ps -o args | grep -v ' \[' )"
if [ "$vmm" = qemu-system-x86_64 ]; then
    tr '\0' ' ' < /proc/$pid/cmdline | grep -q -- "-accel kvm" || fail "qemu without KVM: $(tr '\0' ' ' < /proc/$pid/cmdline)"
fi
out=$(c task exec --fifo-dir "$dir/fifo" --exec-id e1 t3 sh -c 'echo in-exec; cat /proc/1/comm')
[ "$out" = "in-exec
sleep" ] || fail "exec: got '$out'"
ok "exec in a running task on $vmm ($pid)"
c task kill -s SIGKILL t3
i=0
until c task ls | grep -q "t3 .*STOPPED"; do
    i=$((i + 1)); [ $i -lt 300 ] || fail "t3 not stopped after kill: $(c task ls)"; sleep 0.1
done
c task rm t3 > /dev/null
c container rm t3
ok "kill: the task stopped, removed"

# A CRI pod: two containers in one VM, networking, volumes, the jail.
myvm-l1-cri "$dir/containerd.sock" /tmp/cri-$backend
ok "CRI pod"

/opt/myvm-tests/containerd-private.sh stop "$dir"
trap - EXIT
left=$(ps -o pid,args | grep -E "containerd-shim-myvm|myvm-vmm|qemu-system|virtiofsd|vhost-device-vsock" | grep -v grep || true)
[ -z "$left" ] || fail "left running: $left"
mounts=$(grep -E "/run/myvm|$dir" /proc/mounts || true)
[ -z "$mounts" ] || fail "left mounted: $mounts"
for d in /run/myvm/sandboxes/*/* /run/myvm/shared/*/* /run/myvm/volumes/*/*; do
    [ -e "$d" ] && fail "left: $d"
done
ok "nothing left"
