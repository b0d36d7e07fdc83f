//! The agent's OCI runtime through a real microVM (qemu backend, virtio-fs rootfs, vsock stdio):
//! one test per spec field, each checking the effect from inside the container.

use std::time::Duration;

use myvm_tests::guest::{sh, spec, Output, TestVm};
use serde_json::{json, Value};

fn run(vm: &TestVm, id: &str, spec: &Value) -> Output {
    vm.run(id, spec).unwrap_or_else(|e| panic!("{id}: {e}"))
}

/// `spec` with the field at `pointer` (`/a/b`) set; the parent object must exist.
fn with(mut spec: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let obj = spec
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("no {parent}"));
    obj.insert(key.to_string(), value);
    spec
}

#[test]
fn spec_fields_take_effect() {
    let vm = TestVm::boot();

    // args, exit code, stdout and stderr kept apart
    let o = run(&vm, "exit", &sh("echo out; echo err >&2; exit 3"));
    assert_eq!(
        (o.status, o.stdout.as_str(), o.stderr.as_str()),
        (3, "out\n", "err\n")
    );

    // hostname (uts namespace)
    let o = run(
        &vm,
        "hostname",
        &with(sh("hostname"), "/hostname", json!("conformance")),
    );
    assert_eq!(o.stdout, "conformance\n");

    // env and cwd
    let mut s = sh("echo $FOO; pwd");
    s["process"]["env"] = json!(["PATH=/bin", "FOO=bar"]);
    s["process"]["cwd"] = json!("/tmp");
    assert_eq!(run(&vm, "env", &s).stdout, "bar\n/tmp\n");

    // uid, gid, additional gids
    let o = run(
        &vm,
        "user",
        &with(
            sh("id"),
            "/process/user",
            json!({"uid": 1000, "gid": 1000, "additionalGids": [10]}),
        ),
    );
    assert_eq!(
        o.stdout.trim(),
        "uid=1000(user) gid=1000(user) groups=10(wheel)",
        "{o:?}"
    );

    // umask
    let o = run(
        &vm,
        "umask",
        &with(
            sh("umask"),
            "/process/user",
            json!({"uid": 0, "gid": 0, "umask": 63}),
        ),
    );
    assert_eq!(o.stdout.trim(), "0077");

    // pid namespace: the container's init is pid 1
    assert_eq!(run(&vm, "pidns", &sh("echo $$")).stdout, "1\n");

    // capabilities: only NET_BIND_SERVICE (bit 10) effective
    let mut s = sh("grep CapEff /proc/self/status");
    s["process"]["capabilities"] = json!({"bounding": ["CAP_NET_BIND_SERVICE"], "effective": ["CAP_NET_BIND_SERVICE"], "permitted": ["CAP_NET_BIND_SERVICE"]});
    assert_eq!(
        run(&vm, "caps", &s).stdout.split_whitespace().last(),
        Some("0000000000000400")
    );

    // rlimits
    let o = run(
        &vm,
        "rlimit",
        &with(
            sh("ulimit -n"),
            "/process/rlimits",
            json!([{"type": "RLIMIT_NOFILE", "hard": 123, "soft": 123}]),
        ),
    );
    assert_eq!(o.stdout, "123\n");

    // no_new_privileges
    assert!(run(&vm, "nnp", &sh("grep NoNewPrivs /proc/self/status"))
        .stdout
        .contains('1'));

    // readonly rootfs
    let o = run(
        &vm,
        "ro",
        &with(
            sh("touch /x && echo wrote; exit 0"),
            "/root/readonly",
            json!(true),
        ),
    );
    assert!(
        !o.stdout.contains("wrote") && o.stderr.contains("Read-only file system"),
        "{o:?}"
    );

    // masked and readonly paths
    let mut s = sh("wc -c < /etc/hostname; echo x > /proc/sys/kernel/hostname || echo ro");
    s["linux"]["maskedPaths"]
        .as_array_mut()
        .unwrap()
        .push(json!("/etc/hostname"));
    let o = run(&vm, "masked", &s);
    assert_eq!(
        o.stdout.split_whitespace().collect::<Vec<_>>(),
        ["0", "ro"],
        "{o:?}"
    );
    assert!(o.stderr.contains("Read-only file system"), "{o:?}");

    // mounts with options
    let mut s = sh("grep ' /data ' /proc/self/mountinfo");
    s["mounts"].as_array_mut().unwrap().push(json!({"destination": "/data", "type": "tmpfs", "source": "tmpfs", "options": ["size=1m", "noexec"]}));
    let o = run(&vm, "mounts", &s);
    assert!(
        o.stdout.contains("tmpfs") && o.stdout.contains("noexec"),
        "{o:?}"
    );

    // sysctl (ipc namespace)
    let o = run(
        &vm,
        "sysctl",
        &with(
            sh("cat /proc/sys/kernel/msgmax"),
            "/linux/sysctl",
            json!({"kernel.msgmax": "4096"}),
        ),
    );
    assert_eq!(o.stdout, "4096\n");

    // oom_score_adj
    let mut s = sh("cat /proc/self/oom_score_adj");
    s["process"]["oomScoreAdj"] = json!(500);
    assert_eq!(run(&vm, "oomadj", &s).stdout, "500\n");

    // seccomp: mkdir fails with EPERM, the rest is allowed
    let mut s = sh("mkdir /tmp/d 2>&1; echo done");
    s["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]});
    let o = run(&vm, "seccomp", &s);
    assert!(
        o.stdout.contains("Operation not permitted") && o.stdout.contains("done"),
        "{o:?}"
    );

    // cgroup v2 resources, seen from inside (cgroup namespace)
    let mut s = sh("cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max /sys/fs/cgroup/cpu.max /sys/fs/cgroup/cpu.weight");
    s["linux"]["resources"] = json!({"memory": {"limit": 67108864}, "pids": {"limit": 32},
        "cpu": {"quota": 50000, "period": 100000, "shares": 1024}});
    let o = run(&vm, "cgroups", &s);
    assert_eq!(
        o.stdout.lines().collect::<Vec<_>>(),
        ["67108864", "32", "50000 100000", "100"],
        "{o:?}"
    );

    TestVm::shutdown(vm);
}

#[test]
fn devices_capability_sets_user_namespace_and_more_resources() {
    let vm = TestVm::boot();

    // default devices
    let o = run(&vm, "devices", &sh("for d in null zero full random urandom tty; do test -c /dev/$d || echo missing $d; done; echo checked"));
    assert_eq!(o.stdout, "checked\n", "{o:?}");

    // all five capability sets, ambient included (as a non-root user)
    let mut s = sh("grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb)' /proc/self/status");
    let one = json!(["CAP_NET_BIND_SERVICE"]);
    s["process"]["user"] = json!({"uid": 1000, "gid": 1000});
    s["process"]["capabilities"] = json!({"bounding": one, "effective": one, "permitted": one, "inheritable": one, "ambient": one});
    s["process"]["noNewPrivileges"] = json!(false);
    let o = run(&vm, "capsets", &s);
    let sets: Vec<_> = o
        .stdout
        .lines()
        .map(|l| l.split_whitespace().last().unwrap_or("").to_string())
        .collect();
    assert_eq!(sets, vec!["0000000000000400"; 5], "{o:?}");

    // user namespace with mappings
    let mut s = sh("cat /proc/self/uid_map /proc/self/gid_map; id -u");
    s["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .push(json!({"type": "user"}));
    s["linux"]["uidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    s["linux"]["gidMappings"] = json!([{"containerID": 0, "hostID": 100000, "size": 65536}]);
    // sysfs may only be mounted by a user namespace that owns the network namespace, and the
    // container shares the VM's (the pod's) network namespace, as runc with a shared netns.
    s["mounts"]
        .as_array_mut()
        .unwrap()
        .retain(|m| !m["destination"].as_str().unwrap().starts_with("/sys"));
    let o = run(&vm, "userns", &s);
    let words: Vec<_> = o.stdout.split_whitespace().collect();
    assert_eq!(
        words,
        ["0", "100000", "65536", "0", "100000", "65536", "0"],
        "{o:?}"
    );

    // cpuset and swap limits
    let mut s = sh("cat /sys/fs/cgroup/cpuset.cpus /sys/fs/cgroup/memory.swap.max");
    s["linux"]["resources"] =
        json!({"cpu": {"cpus": "0"}, "memory": {"limit": 67108864, "swap": 134217728}});
    let o = run(&vm, "cpuset", &s);
    assert_eq!(
        o.stdout.lines().collect::<Vec<_>>(),
        ["0", "67108864"],
        "{o:?}"
    );

    TestVm::shutdown(vm);
}

#[test]
fn propagation_io_weight_and_sandbox_pid_namespace() {
    let vm = TestVm::boot_with(true);

    // sandbox-wide pid namespace (held by the sandbox's first container, as a pod's pause
    // container): a second container sees the first one's processes
    vm.create("first", &sh("sleep 1000"), Default::default())
        .unwrap();
    vm.start("first").unwrap();
    let o = run(&vm, "second", &sh("pidof sleep || echo none; echo $$"));
    let lines: Vec<_> = o.stdout.lines().collect();
    assert_ne!(
        lines[0], "none",
        "the first container's sleep is visible: {o:?}"
    );
    assert_ne!(
        lines[1], "1",
        "the second container is not its pid namespace's init: {o:?}"
    );

    // rootfs propagation
    let mut s = sh("awk '$5 == \"/\"' /proc/self/mountinfo");
    s["linux"]["rootfsPropagation"] = json!("shared");
    let o = run(&vm, "propagation", &s);
    assert!(o.stdout.contains("shared:"), "{o:?}");

    // io weight
    let mut s = sh("cat /sys/fs/cgroup/io.weight");
    s["linux"]["resources"] = json!({"blockIO": {"weight": 500}});
    let o = run(&vm, "ioweight", &s);
    assert_eq!(
        o.stdout, "default 4950\n",
        "blkio 500 -> io.weight as runc converts it: {o:?}"
    );

    vm.signal("first", "", libc::SIGKILL, true).unwrap();
    vm.wait("first", "", Duration::from_secs(30)).unwrap();
    vm.remove("first").unwrap();
    // Once the holder is gone, a new container gets a clear error.
    let err = vm
        .create("late", &sh("true"), Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("pid namespace"), "{err}");
    TestVm::shutdown(vm);
}

#[test]
fn errors_are_clear_and_leave_nothing() {
    let vm = TestVm::boot();
    let err = vm
        .run("nobin", &spec(&["/no/such/binary"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/no/such/binary"), "{err}");

    let err = vm
        .create(
            "badspec",
            &json!({"ociVersion": "1.0.2"}),
            Default::default(),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("no process"), "{err}");

    let err = vm
        .create("../x", &sh("true"), Default::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid container id"), "{err}");

    // After failures the ids are free again and the container works.
    let o = vm.run("nobin", &sh("echo fine")).unwrap();
    assert_eq!(o.stdout, "fine\n");
    let _ = Duration::ZERO;
    TestVm::shutdown(vm);
}
