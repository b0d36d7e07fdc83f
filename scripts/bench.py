#!/usr/bin/env python3
"""`make bench`: what myvm costs, measured side by side in one run, printed as a table and
written as JSON (build/bench.json).

  1. `ctr run --rm <busybox> true` wall time, myvm (qemu backend) vs runc, runs alternated
  2. one myvm start broken down, from the timestamps the shim logs (`myvm timing ...` lines in
     containerd's log, see shim/src/timing.rs): containerd -> shim, daemons, VMM -> guest kernel,
     kernel boot, agent init, CreateSandbox, CreateContainer, StartContainer, exit, teardown
  3. host memory per pod (PSS of shim + VMM + daemons) while a pod idles, and the guest RAM
     actually touched (the VMM's shared-memory RSS: guest RAM is a memfd)
  4. density: K pods started at once, total time and host PSS
  5. stdio throughput: MiB/s of a 64 MiB stream from a container to the host
  6. builtin VMM vs QEMU on this /dev/kvm: start to first KVM_RUN and VMM RSS (vmm/examples/bench.rs)
  7. L1 nested KVM (`make l1`; tests/l1/bench.sh inside the L1 VM, whose CPU is TCG emulating AMD
     SVM): builtin vs QEMU-KVM boot to agent READY, `ctr run --rm true` builtin vs qemu vs runc,
     VMM RSS and pod PSS, all side by side in one L1 run
  8. memory given back (qemu/TCG): host PSS of a pod (`ctr run --memory-limit 1GiB`) idle, holding
     400 MiB, and 10 s after freeing it (free page reporting)
  9. what room to grow costs (qemu/TCG): `ctr run --rm true` and an idle pod's PSS with
     memory_growth_mib = 1024 (the default: hot-pluggable RAM the guest boots without) vs 0,
     alternated
Env: BENCH_RUNS (default 5), BENCH_PODS (default 4).
"""
import json, os, statistics, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = int(os.environ.get("BENCH_RUNS", "5"))
PODS = int(os.environ.get("BENCH_PODS", "4"))
IMAGE = "localhost/busybox:latest"
MYVM = "io.containerd.myvm.v2"
RUNC = "io.containerd.runc.v2"


def sh(*args, **kw):
    r = subprocess.run(args, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"bench: {' '.join(args)} failed ({r.returncode}):\n{r.stderr}")
    return r


def stats(xs):
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return sum(int(l.split()[1]) for l in f if l.startswith("Pss:"))
    except OSError:
        return 0


def status_kib(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(l.split()[1]) for l in f if l.startswith(field + ":")), 0)
    except OSError:
        return 0


def is_vmm(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            exe = f.read().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return False
    return exe.endswith("qemu-system-x86_64") or exe.endswith("myvm-vmm")


def descendants(pid):
    out = sh("ps", "-e", "-o", "pid=,ppid=").stdout.split()
    kids = {}
    for p, pp in zip(out[::2], out[1::2]):
        kids.setdefault(int(pp), []).append(int(p))
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += kids.get(p, [])
    return seen


def shims(sock):
    out = subprocess.run(["pgrep", "-f", f"containerd-shim-myvm-v2.*{sock}"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


STEPS = ["shim_started", "vmm_spawned", "kernel_started", "agent_started", "agent_ready",
         "sandbox_created", "rootfs_mounted", "container_created", "container_started", "exit_reported"]
SEGMENTS = [  # (label, from, to); "ctr" is ctr's start or end
    ("containerd: ctr run -> shim serving", "ctr_start", "shim_started"),
    ("shim: vhost-user daemons + VMM spawn", "shim_started", "vmm_spawned"),
    ("VMM: spawn -> guest kernel entry", "vmm_spawned", "kernel_started"),
    ("guest kernel boot -> agent start", "kernel_started", "agent_started"),
    ("agent init -> READY", "agent_started", "agent_ready"),
    ("shim+agent: Check + CreateSandbox", "agent_ready", "sandbox_created"),
    ("shim: rootfs + volumes mounted", "sandbox_created", "rootfs_mounted"),
    ("shim+agent: CreateContainer", "rootfs_mounted", "container_created"),
    ("shim+agent: StartContainer", "container_created", "container_started"),
    ("container runs `true`, exit reported", "container_started", "exit_reported"),
    ("delete + VM shutdown -> ctr returns", "exit_reported", "ctr_end"),
]
OUTSIDE_BOOT = ["shim: vhost-user daemons + VMM spawn", "agent init -> READY", "shim+agent: Check + CreateSandbox",
                "shim: rootfs + volumes mounted", "shim+agent: CreateContainer", "shim+agent: StartContainer"]


def breakdown(log, spans):
    """Per-segment stats (ms) of the myvm starts in `spans`, from the shim's timing lines."""
    marks = {}
    with open(log, errors="replace") as f:
        for line in f:
            if "myvm timing" not in line:
                continue
            kv = dict(p.split("=", 1) for p in line.split("myvm timing", 1)[1].split('"')[0].split() if "=" in p)
            if kv.get("id") in spans and kv.get("step") in STEPS:
                marks.setdefault(kv["id"], {})[kv["step"]] = int(kv["epoch_us"]) / 1000.0
    segs = {label: [] for label, _, _ in SEGMENTS}
    segs["shim+agent outside the guest boot"] = []
    for run, (t0, t1) in spans.items():
        m = dict(marks.get(run, {}), ctr_start=t0 * 1000, ctr_end=t1 * 1000)
        if not all(s in m for s in STEPS):
            print(f"bench: run {run} lacks timing steps {[s for s in STEPS if s not in m]}", file=sys.stderr)
            continue
        got = {label: m[b] - m[a] for label, a, b in SEGMENTS}
        for label, v in got.items():
            segs[label].append(v)
        segs["shim+agent outside the guest boot"].append(sum(got[k] for k in OUTSIDE_BOOT))
    return {k: stats(v) for k, v in segs.items() if v}


def main():
    d = tempfile.mkdtemp(prefix="myvm-bench-")
    env = dict(os.environ, PATH=f"{ROOT}/target/release:" + os.environ["PATH"])
    sock = sh(f"{ROOT}/scripts/containerd-private.sh", "start", d, env=env).stdout.strip()
    ctr = ["ctr", "-a", sock]
    res = {}
    try:
        sh(sys.executable, f"{ROOT}/scripts/mkimage.py", "--name", IMAGE, "-o", f"{d}/bb.tar")
        sh(*ctr, "images", "import", f"{d}/bb.tar")

        # 1. ctr run --rm, alternated
        times = {MYVM: [], RUNC: []}
        spans = {}  # myvm run id -> (wall clock before ctr, after ctr)
        for i in range(RUNS):
            for rt in (MYVM, RUNC):
                name = f"b{i}-{'myvm' if rt == MYVM else 'runc'}"
                t, wall = time.monotonic(), time.time()
                sh(*ctr, "run", "--rm", "--null-io", "--runtime", rt, IMAGE, name, "true")
                times[rt].append(time.monotonic() - t)
                if rt == MYVM:
                    spans[name] = (wall, time.time())
        res["ctr_run_s"] = {"myvm": stats(times[MYVM]), "runc": stats(times[RUNC])}
        time.sleep(0.5)  # the last shim's log lines reach containerd's log
        res["start_breakdown_ms"] = breakdown(f"{d}/containerd.log", spans)

        # 2. breakdown of one start
        boots = [json.loads(sh(f"{ROOT}/target/release/myvm", "boot", "--json").stdout) for _ in range(min(RUNS, 3))]
        res["boot_ms"] = {k: stats([b[k] for b in boots]) for k in ("boot_to_agent_ready_ms", "agent_init_ms", "guest_uptime_at_query_ms")}
        # The guest kernel's size: what building in bridge, veth, tun, nf_tables/iptables, conntrack
        # and NAT (#15) costs, with the boot time above.
        res["guest_kernel_mib"] = os.path.getsize(os.environ["MYVM_KERNEL"]) / 2**20

        # 3. memory of an idle pod
        sh(*ctr, "run", "-d", "--null-io", "--runtime", MYVM, IMAGE, "idle", "sleep", "1000")
        time.sleep(2)
        procs = [p for s in shims(sock) for p in descendants(s)]
        res["pod_host_pss_mib"] = sum(pss_kib(p) for p in procs) / 1024
        # Guest RAM is a shared memfd: the VMM's RssShmem is the guest memory touched so far.
        res["guest_touched_mib"] = sum(status_kib(p, "RssShmem") for p in procs if is_vmm(p)) / 1024
        sh(*ctr, "task", "kill", "-s", "KILL", "idle"); time.sleep(1)
        subprocess.run(ctr + ["task", "rm", "idle"], capture_output=True)
        subprocess.run(ctr + ["container", "rm", "idle"], capture_output=True)

        # 4. density
        t = time.monotonic()
        ps = [subprocess.Popen(ctr + ["run", "-d", "--null-io", "--runtime", MYVM, IMAGE, f"pod{i}", "sleep", "1000"]) for i in range(PODS)]
        ok = all(p.wait() == 0 for p in ps)
        res["density"] = {"pods": PODS, "all_started": ok, "start_all_s": time.monotonic() - t}
        time.sleep(2)
        res["density"]["host_pss_mib"] = sum(pss_kib(p) for s in shims(sock) for p in descendants(s)) / 1024
        for i in range(PODS):
            subprocess.run(ctr + ["task", "kill", "-s", "KILL", f"pod{i}"], capture_output=True)
        time.sleep(2)
        for i in range(PODS):
            subprocess.run(ctr + ["task", "rm", f"pod{i}"], capture_output=True)
            subprocess.run(ctr + ["container", "rm", f"pod{i}"], capture_output=True)

        # 8. memory given back: a 1 GiB container holds 400 MiB, then frees it
        sh(*ctr, "run", "-d", "--null-io", "--runtime", MYVM, "--memory-limit", str(1 << 30), "--mount",
           "type=tmpfs,src=none,dst=/big,options=size=600m", IMAGE, "fpr", "sleep", "1000")
        time.sleep(2)
        pod_pss = lambda: sum(pss_kib(p) for s in shims(sock) for p in descendants(s)) / 1024
        fpr = {"idle_mib": pod_pss()}
        sh(*ctr, "task", "exec", "--exec-id", "fill", "fpr", "dd", "if=/dev/zero", "of=/big/f", "bs=1M", "count=400")
        fpr["holding_400_mib"] = pod_pss()
        sh(*ctr, "task", "exec", "--exec-id", "free", "fpr", "rm", "/big/f")
        time.sleep(10)
        fpr["freed_10s_mib"] = pod_pss()
        res["memory_given_back"] = fpr
        sh(*ctr, "task", "kill", "-s", "KILL", "fpr"); time.sleep(1)
        subprocess.run(ctr + ["task", "rm", "fpr"], capture_output=True)
        subprocess.run(ctr + ["container", "rm", "fpr"], capture_output=True)

        # 9. what room to grow costs: default (1 GiB hot-pluggable) vs none, alternated
        cfgs = {}
        for g in (1024, 0):
            cfgs[g] = f"{d}/growth{g}.toml"
            with open(cfgs[g], "w") as f:
                f.write(f"memory_growth_mib = {g}\n")
        grow = {g: [] for g in cfgs}
        for i in range(RUNS):
            for g, cfg in cfgs.items():
                t = time.monotonic()
                sh(*ctr, "run", "--rm", "--null-io", "--runtime", MYVM, "--runtime-config-path", cfg, IMAGE, f"g{g}-{i}", "true")
                grow[g].append(time.monotonic() - t)
        res["growth_room"] = {f"ctr_run_s_growth_{g}": stats(v) for g, v in grow.items()}
        for g, cfg in cfgs.items():
            sh(*ctr, "run", "-d", "--null-io", "--runtime", MYVM, "--runtime-config-path", cfg, IMAGE, f"gidle{g}", "sleep", "1000")
            time.sleep(2)
            res["growth_room"][f"pod_pss_mib_growth_{g}"] = sum(pss_kib(p) for s in shims(sock) for p in descendants(s)) / 1024
            sh(*ctr, "task", "kill", "-s", "KILL", f"gidle{g}"); time.sleep(1)
            subprocess.run(ctr + ["task", "rm", f"gidle{g}"], capture_output=True)
            subprocess.run(ctr + ["container", "rm", f"gidle{g}"], capture_output=True)

        # 5. stdio throughput
        t = time.monotonic()
        out = subprocess.run(ctr + ["run", "--rm", "--runtime", MYVM, IMAGE, "cat", "head", "-c", "67108864", "/dev/zero"],
                             capture_output=True, check=True).stdout
        dt = time.monotonic() - t
        res["stdio"] = {"bytes": len(out), "seconds_incl_start": dt, "mib_s_incl_start": len(out) / 2**20 / dt}
    finally:
        subprocess.run([f"{ROOT}/scripts/containerd-private.sh", "stop", d])
        for s in shims(sock):
            subprocess.run(["kill", "-9", str(s)])
        subprocess.run(["rm", "-rf", d])

    # 6. builtin VMM vs QEMU
    vmm = subprocess.run(["cargo", "run", "--quiet", "--release", "-p", "myvm-vmm", "--example", "bench", "--", "--runs", "2"],
                         cwd=ROOT, capture_output=True, text=True)
    res["vmm_vs_qemu"] = vmm.stdout.strip() or vmm.stderr.strip()[-2000:]

    # 7. inside L1
    l1 = subprocess.run([f"{ROOT}/target/release/myvm-l1", f"sh /opt/myvm-tests/bench.sh {RUNS}"],
                        capture_output=True, text=True)
    res["l1"] = {}
    for line in l1.stdout.splitlines():
        f = line.split()
        if len(f) == 3 and f[0] == "BENCH":
            try:
                res["l1"][f[1]] = float(f[2])
            except ValueError:
                pass
    if l1.returncode != 0:
        res["l1_error"] = l1.stderr.strip()[-2000:]
    os.makedirs(f"{ROOT}/build", exist_ok=True)
    with open(f"{ROOT}/build/bench.json", "w") as f:
        json.dump(res, f, indent=2)

    r = res
    m, c = r["ctr_run_s"]["myvm"], r["ctr_run_s"]["runc"]
    print(f"\n{'measure':48} {'median':>10} {'min':>9} {'max':>9}")
    print(f"{'ctr run --rm true, myvm (qemu/tcg) [s]':48} {m['median']:10.3f} {m['min']:9.3f} {m['max']:9.3f}")
    print(f"{'ctr run --rm true, runc [s]':48} {c['median']:10.3f} {c['min']:9.3f} {c['max']:9.3f}")
    print(f"{'  ratio myvm/runc':48} {m['median'] / c['median']:10.2f}")
    print(f"\nwhere one myvm `ctr run --rm true` goes [ms] (from the shim's timing log, {RUNS} runs):")
    for k, v in r["start_breakdown_ms"].items():
        print(f"{'  ' + k:48} {v['median']:10.1f} {v['min']:9.1f} {v['max']:9.1f}")
    print()
    for k, v in r["boot_ms"].items():
        print(f"{'myvm boot: ' + k:48} {v['median']:10.0f} {v['min']:9.0f} {v['max']:9.0f}")
    print(f"{'guest kernel (vmlinux) [MiB]':48} {r['guest_kernel_mib']:10.1f}")
    print(f"{'host PSS of one idle pod (shim+VMM+daemons) [MiB]':48} {r['pod_host_pss_mib']:10.1f}")
    print(f"{'  of which guest RAM touched (of 256 MiB) [MiB]':48} {r['guest_touched_mib']:10.1f}")
    dn = r["density"]
    print(f"{f'density: {PODS} pods started at once [s]':48} {dn['start_all_s']:10.2f}   all started: {dn['all_started']}")
    print(f"{f'density: host PSS of {PODS} pods [MiB]':48} {dn['host_pss_mib']:10.1f}")
    print(f"{'stdio: 64 MiB container->host incl. start [MiB/s]':48} {r['stdio']['mib_s_incl_start']:10.1f}")
    g = r["memory_given_back"]
    print(f"{'pod PSS (qemu/tcg, 1 GiB limit): idle [MiB]':48} {g['idle_mib']:10.1f}")
    print(f"{'  holding 400 MiB [MiB]':48} {g['holding_400_mib']:10.1f}")
    print(f"{'  10 s after freeing it [MiB]':48} {g['freed_10s_mib']:10.1f}")
    gr = r["growth_room"]
    for g in (1024, 0):
        v = gr[f"ctr_run_s_growth_{g}"]
        print(f"{f'ctr run --rm true, memory_growth_mib={g} [s]':48} {v['median']:10.3f} {v['min']:9.3f} {v['max']:9.3f}")
    for g in (1024, 0):
        print(f"{f'idle pod PSS, memory_growth_mib={g} [MiB]':48} {gr[f'pod_pss_mib_growth_{g}']:10.1f}")
    print("\nbuiltin VMM vs QEMU on this /dev/kvm:\n" + r["vmm_vs_qemu"])
    print(f"\nL1 nested KVM (myvm on KVM inside a TCG VM emulating AMD SVM; medians of {RUNS}; see docs/performance.md):")
    l = r["l1"]
    rows = [("myvm boot: VMM start -> agent READY [ms]", "boot_ms"), ("ctr run --rm true [s]", "ctr_run_s"),
            ("VMM RSS of an idle pod, guest RAM incl. [MiB]", "vmm_rss_mib"), ("host PSS of an idle pod [MiB]", "pod_pss_mib"),
            ("1 GiB pod PSS: idle [MiB]", "fpr_idle_mib"), ("  holding 400 MiB [MiB]", "fpr_holding_mib"),
            ("  10 s after freeing it [MiB]", "fpr_freed_mib")]
    print(f"{'measure':48} {'builtin':>10} {'qemu-kvm':>9} {'runc':>9}")
    for label, key in rows:
        cells = [f"{l[f'{key}_{b}']:.2f}" if f"{key}_{b}" in l else "-" for b in ("builtin", "qemu", "runc")]
        print(f"{label:48} {cells[0]:>10} {cells[1]:>9} {cells[2]:>9}")
    if "l1_error" in r:
        print("L1 section failed:\n" + r["l1_error"])
    os.makedirs(f"{ROOT}/build", exist_ok=True)
    with open(f"{ROOT}/build/bench.json", "w") as f:
        json.dump(res, f, indent=2)
    print(f"\n(JSON: build/bench.json)")


if __name__ == "__main__":
    main()
