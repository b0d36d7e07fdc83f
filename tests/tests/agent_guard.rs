//! Only the host may drive the agent (issue #14, part 2), through real microVMs:
//!
//! - from inside a container (unprivileged, and privileged with every capability and the guest's
//!   devices), a real vsock client tries the agent's API (1024) and stdio (1026) ports on the
//!   guest's own CID, the local CID, the host's CID and VMADDR_CID_ANY: none connects (the guest
//!   kernel has no vsock loopback, and the agent serves the host's CID only). The same client
//!   does reach the agent where it may (the control), so its silence in the guest means
//!   something;
//! - a request that did reach the agent still cannot run a container on the guest's root,
//!   another container's rootfs, or binds of either (the agent's own validation);
//! - an exit event whose GetEvents answer was lost (the caller gave up) is delivered again, until
//!   acknowledged, and a process whose exit the host missed is NOT_FOUND to a kill (on which the
//!   shim records the exit).
//!
//! Container ids carry the test's pid: `/run/myvm` is shared by every containerd on the host.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use myvm_protocol::agent::*;
use myvm_tests::{
    containerd::Containerd,
    guest::{sh, spec, TestVm, SHARED},
    wait_until, workspace, TempDir,
};
use serde_json::json;

const RT: &str = "io.containerd.myvm.v2";
const IMAGE: &str = "localhost/busybox:latest";
/// The guest's vsock CID (the shim gives every VM 3).
const GUEST_CID: u32 = 3;

fn text(o: &Output) -> String {
    format!(
        "exit: {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Builds tests/tools/agent_probe.c (static: it runs in a busybox container) into `dir`.
fn build_probe(dir: &Path) -> PathBuf {
    let out = dir.join("agent_probe");
    let o = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&out)
        .arg(workspace().join("tests/tools/agent_probe.c"))
        .output()
        .expect("gcc (build-essential) to build the vsock probe");
    assert!(o.status.success(), "building the probe: {}", text(&o));
    out
}

/// Every way a guest process could address the agent: its two vsock ports on the guest's own
/// CID, the local CID (loopback), the host's CID (where the host, not the agent, listens) and
/// VMADDR_CID_ANY.
fn targets() -> Vec<String> {
    let mut t = Vec::new();
    for port in [1024, 1026] {
        for cid in [
            GUEST_CID,
            libc::VMADDR_CID_LOCAL,
            libc::VMADDR_CID_HOST,
            libc::VMADDR_CID_ANY,
        ] {
            t.push(format!("{cid}:{port}"));
        }
    }
    t
}

/// The probe's line for `target`, or a panic showing everything it printed.
fn line<'a>(out: &'a str, target: &str) -> &'a str {
    out.lines()
        .find(|l| l.split(' ').next() == Some(target))
        .unwrap_or_else(|| panic!("no line for {target} in:\n{out}"))
}

/// Nothing in the probe's output reached the agent: no connection at all, refused by the
/// transport (not by a seccomp filter or a missing address family: the attacker could make
/// vsock sockets, the refusal is the kernel's and the agent's).
fn assert_unreachable(out: &str, who: &str) {
    for t in targets() {
        let l = line(out, &t);
        assert!(
            !l.contains("connect=ok"),
            "{who}: connected to the agent's port at {t}:\n{out}"
        );
        for not in ["EPERM", "EACCES", "EAFNOSUPPORT"] {
            assert!(
                !l.contains(not),
                "{who}: {t} refused by the sandbox ({not}), not the transport; the test proves nothing:\n{out}"
            );
        }
    }
}

/// A myvm-agent on the host, on Unix sockets (its test mode), killed on drop.
struct HostAgent {
    child: std::process::Child,
    api: PathBuf,
    stdio: PathBuf,
}

impl HostAgent {
    fn start(dir: &Path) -> HostAgent {
        let bin = workspace().join("target/x86_64-unknown-linux-gnu/release/myvm-agent");
        assert!(
            bin.exists(),
            "{} missing: run `make image` (it builds the agent)",
            bin.display()
        );
        let (api, stdio) = (dir.join("agent.sock"), dir.join("stdio.sock"));
        let child = Command::new(&bin)
            .arg("--listen")
            .arg(format!("unix://{}", api.display()))
            .arg("--stdio-listen")
            .arg(format!("unix://{}", stdio.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let agent = HostAgent { child, api, stdio };
        wait_until("the host agent's sockets", Duration::from_secs(10), || {
            agent.api.exists() && agent.stdio.exists()
        });
        agent
    }
}

impl Drop for HostAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn containers_cannot_reach_the_agent() {
    let tools = TempDir::new("myvm-guard-probe");
    let probe = build_probe(tools.path());

    // The control: where the agent does serve the caller (its Unix socket test mode), the probe
    // gets its answers, to a ttrpc Check and to a stdio header. So silence in the guest is the
    // guard's, not a broken probe.
    let host_agent = HostAgent::start(tools.path());
    let o = Command::new(&probe)
        .arg(format!("unix:{}", host_agent.api.display()))
        .arg(format!("unix-stdio:{}", host_agent.stdio.display()))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        line(&out, &format!("unix:{}", host_agent.api.display())).contains("check=SERVING"),
        "the probe does not speak the agent API: {out}"
    );
    assert!(
        line(&out, &format!("unix-stdio:{}", host_agent.stdio.display()))
            .contains("stdio=ERR_container_\"probe\"_not_found"),
        "the probe does not speak the stdio protocol: {out}"
    );
    drop(host_agent);

    let c = Containerd::start();
    let mount = format!(
        "type=bind,src={},dst=/probe,options=rbind:ro",
        tools.path().display()
    );
    let mut script = String::from("grep CapEff /proc/self/status; /probe/agent_probe");
    for t in targets() {
        script.push(' ');
        script.push_str(&t);
    }
    for (who, opts) in [
        // ctr's default spec: containerd's default capabilities, no seccomp filter (which would
        // only add a refusal of its own).
        ("unprivileged", vec![]),
        // Guest root with every capability (CAP_NET_ADMIN, CAP_SYS_ADMIN, …) and the guest's
        // devices (/dev/vsock): still not the host.
        ("privileged", vec!["--privileged"]),
    ] {
        let id = format!("guard-{who}-{}", std::process::id());
        let mut args = vec!["run", "--rm", "--runtime", RT, "--mount", &mount];
        args.extend(opts.iter().copied());
        args.extend([IMAGE, id.as_str(), "sh", "-c", script.as_str()]);
        let o = c.ctr(&args);
        let _ = c.ctr(&["container", "rm", &id]);
        assert_eq!(o.status.code(), Some(0), "{who}: {}", text(&o));
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let caps = out
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or_else(|| panic!("no CapEff in {out}"));
        const CAP_NET_ADMIN: u32 = 12;
        assert_eq!(
            caps & (1 << CAP_NET_ADMIN) != 0,
            who == "privileged",
            "{who}: CapEff {caps:x}"
        );
        assert_unreachable(&out, who);
        // No loopback transport in the guest kernel: the guest's own CID is no destination at
        // all. (The other CIDs go out through the virtio transport to the host's vsock daemon,
        // where nothing answers for them.)
        for t in [format!("{GUEST_CID}:1024"), format!("{GUEST_CID}:1026")] {
            assert!(
                line(&out, &t).contains("connect=ENODEV"),
                "{who}: {t} not refused as having no transport:\n{out}"
            );
        }
    }
}

/// Guest path of container `id`'s directory in the share.
fn guest_dir(id: &str) -> String {
    format!("{SHARED}/{id}")
}

#[test]
fn the_agent_runs_nothing_beyond_the_containers_share() {
    let vm = TestVm::boot();
    // A victim with a file of its own, and the control: a container binding a volume of its own
    // directory gets it.
    std::fs::create_dir_all(vm.shared.path().join("good/mounts/0")).unwrap();
    std::fs::write(vm.shared.path().join("good/mounts/0/hello"), "own volume\n").unwrap();
    let mut s = sh("cat /data/hello");
    s["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/data", "type": "bind", "source": format!("{}/mounts/0", guest_dir("good")),
        "options": ["rbind", "ro"]}));
    let o = vm.run("good", &s).unwrap();
    assert_eq!((o.status, o.stdout.as_str()), (0, "own volume\n"), "{o:?}");
    vm.create("victim", &sh("sleep 1000"), Default::default())
        .unwrap();
    std::fs::write(vm.shared.path().join("victim/rootfs/secret"), "victim's\n").unwrap();

    let create = |id: &str, spec: &serde_json::Value, rootfs: &str| {
        let req = CreateContainerRequest {
            container_id: id.into(),
            oci_spec: serde_json::to_vec(spec).unwrap(),
            rootfs: rootfs.into(),
            ..Default::default()
        };
        vm.agent()
            .call("CreateContainer", |c, ctx| c.create_container(ctx, &req))
            .map(|r| r.pid)
            .map_err(|e| e.to_string())
    };
    // The attacker's own directory, with a symlink to the guest's root in its "volume".
    myvm_tests::busybox_rootfs(&vm.shared.path().join("evil/rootfs"));
    std::fs::create_dir_all(vm.shared.path().join("evil/mounts")).unwrap();
    std::os::unix::fs::symlink("/", vm.shared.path().join("evil/mounts/0")).unwrap();
    let own_rootfs = TestVm::rootfs("evil");
    let bind = |source: &str| {
        let mut s = spec(&["cat", "/x/secret"]);
        s["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/x", "type": "bind", "source": source, "options": ["rbind"]}),
        );
        s
    };
    let attempts: Vec<(&str, serde_json::Value, String, &str)> = vec![
        (
            "guest root as rootfs",
            sh("true"),
            "/".into(),
            "not the container's own",
        ),
        (
            "another container's rootfs",
            sh("cat /secret"),
            TestVm::rootfs("victim"),
            "not the container's own",
        ),
        (
            "rootfs through ..",
            sh("true"),
            format!("{}/../victim/rootfs", guest_dir("evil")),
            "without `..`",
        ),
        (
            "bind of the guest root",
            bind("/"),
            own_rootfs.clone(),
            "not below",
        ),
        (
            "bind of the whole share",
            bind(SHARED),
            own_rootfs.clone(),
            "not below",
        ),
        (
            "bind of another container's rootfs",
            bind(&TestVm::rootfs("victim")),
            own_rootfs.clone(),
            "not below",
        ),
        (
            "bind through a symlink to /",
            bind(&format!("{}/mounts/0", guest_dir("evil"))),
            own_rootfs.clone(),
            "leads to /",
        ),
        (
            "the share mounted again",
            {
                let mut s = sh("true");
                s["mounts"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"destination": "/x", "type": "virtiofs", "source": "myvmfs"}));
                s
            },
            own_rootfs.clone(),
            "only binds from the container's own shared directory",
        ),
    ];
    for (what, spec, rootfs, why) in &attempts {
        let err = create("evil", spec, rootfs).expect_err(what);
        assert!(err.contains("INVALID_ARGUMENT"), "{what}: {err}");
        assert!(err.contains(why), "{what}: {err}");
    }
    // Ids that are paths.
    for id in ["../evil", "evil/..", ".."] {
        let err = create(id, &sh("true"), &own_rootfs).unwrap_err();
        assert!(err.contains("invalid container id"), "{id}: {err}");
    }
    // The refusals left nothing: the id is free, and with its own rootfs the container runs.
    std::fs::remove_file(vm.shared.path().join("evil/mounts/0")).unwrap();
    let o = vm.run("evil", &sh("cat /secret 2>&1; echo done")).unwrap();
    assert!(
        o.stdout.ends_with("done\n") && !o.stdout.contains("victim's"),
        "{o:?}"
    );

    vm.signal("victim", "", libc::SIGKILL, true).unwrap();
    vm.wait("victim", "", Duration::from_secs(30)).unwrap();
    vm.remove("victim").unwrap();
    TestVm::shutdown(vm);
}

fn get_events(
    vm: &TestVm,
    ack: u64,
    timeout_ms: u32,
    call_timeout: Duration,
) -> Result<Vec<Event>, String> {
    let req = GetEventsRequest {
        timeout_ms,
        ack,
        ..Default::default()
    };
    vm.agent()
        .call_with_timeout("GetEvents", call_timeout, |c, ctx| c.get_events(ctx, &req))
        .map(|r| r.events)
        .map_err(|e| e.to_string())
}

fn exits_of<'a>(events: &'a [Event], id: &str) -> Vec<&'a Event> {
    events
        .iter()
        .filter(|e| e.container_id == id && e.has_exited())
        .collect()
}

#[test]
fn an_exit_whose_answer_was_lost_is_delivered_again() {
    let vm = TestVm::boot();
    vm.create("ev", &sh("sleep 3; exit 7"), Default::default())
        .unwrap();
    vm.start("ev").unwrap();
    // A long poll whose caller gives up before the exit: the agent answers it later, to nobody
    // (as when the shim's call times out, or an impostor's connection goes away).
    let gone = get_events(&vm, 0, 15_000, Duration::from_millis(500));
    assert!(gone.is_err(), "{gone:?}");
    assert_eq!(vm.wait("ev", "", Duration::from_secs(30)).unwrap(), 7);
    std::thread::sleep(Duration::from_millis(500));

    // Not acknowledged: the next poll gets it, and again while it is not acknowledged.
    let events = get_events(&vm, 0, 0, Duration::from_secs(10)).unwrap();
    let exits = exits_of(&events, "ev");
    assert_eq!(exits.len(), 1, "{events:?}");
    assert_eq!(exits[0].exited().exit_status, 7);
    let seq = exits[0].seq;
    assert!(seq > 0);
    let again = get_events(&vm, 0, 0, Duration::from_secs(10)).unwrap();
    assert_eq!(exits_of(&again, "ev").len(), 1, "{again:?}");
    assert_eq!(exits_of(&again, "ev")[0].seq, seq);
    // Acknowledged: gone for good.
    let after = get_events(&vm, seq, 0, Duration::from_secs(10)).unwrap();
    assert!(exits_of(&after, "ev").is_empty(), "{after:?}");
    assert!(after.iter().all(|e| e.seq > seq), "{after:?}");

    // A host that missed the exit learns of it from a kill (NOT_FOUND, also for the whole
    // container) and WaitProcess (the status): what the shim does for `ctr task rm -f`.
    for all in [false, true] {
        let err = vm
            .signal("ev", "", libc::SIGKILL, all)
            .unwrap_err()
            .to_string();
        assert!(err.contains("NOT_FOUND"), "all={all}: {err}");
    }
    assert_eq!(vm.wait("ev", "", Duration::from_secs(5)).unwrap(), 7);
    vm.remove("ev").unwrap();
    TestVm::shutdown(vm);
}
