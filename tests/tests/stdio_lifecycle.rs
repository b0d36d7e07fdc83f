//! Stdio and lifecycle of containers in a real microVM: big outputs intact, stdin, output right
//! before exit, signals, concurrent execs, terminals, OOM, pause/resume, stats, update.

use std::{
    io::{Read, Write},
    net::Shutdown,
    time::Duration,
};

use myvm::agent_client::{open_stdio, StdioStream};
use myvm_protocol::agent::*;
use myvm_tests::guest::{sh, TestVm};
use serde_json::json;

fn sha256_hex(data: &[u8]) -> String {
    use std::process::{Command, Stdio};
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn exec_req(id: &str, exec: &str, args: &[&str], stdio: Stdio) -> ExecProcessRequest {
    ExecProcessRequest {
        container_id: id.into(),
        exec_id: exec.into(),
        process: serde_json::to_vec(
            &json!({"user": {"uid": 0, "gid": 0}, "args": args, "cwd": "/", "env": ["PATH=/bin"]}),
        )
        .unwrap(),
        stdio: Some(stdio).into(),
        ..Default::default()
    }
}

#[test]
fn stdio_is_exact() {
    let vm = TestVm::boot();

    // 64 MiB through stdout, checksummed on both sides.
    let spec =
        sh("head -c 67108864 /dev/urandom > /tmp/blob; sha256sum /tmp/blob >&2; cat /tmp/blob");
    vm.create(
        "big2",
        &spec,
        Stdio {
            stdout: true,
            stderr: true,
            ..Default::default()
        },
    )
    .unwrap();
    let readers = vm.attach_output("big2", "");
    vm.start("big2").unwrap();
    assert_eq!(vm.wait("big2", "", Duration::from_secs(120)).unwrap(), 0);
    let (out, err) = readers.collect_raw();
    assert_eq!(out.len(), 64 << 20);
    assert_eq!(
        sha256_hex(&out),
        String::from_utf8_lossy(&err)
            .split_whitespace()
            .next()
            .unwrap()
    );
    vm.remove("big2").unwrap();

    // Output written right before exit, after a while of silence, is all there.
    let o = vm
        .run(
            "last",
            &sh("sleep 0.2; for i in $(seq 1 2000); do echo line$i; done; exit 7"),
        )
        .unwrap();
    assert_eq!(o.status, 7);
    assert_eq!(o.stdout.lines().count(), 2000);
    assert_eq!(o.stdout.lines().last(), Some("line2000"));

    // stdin echoed back through cat, EOF ends it.
    vm.create(
        "cat",
        &sh("cat; echo done"),
        Stdio {
            stdin: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        },
    )
    .unwrap();
    let readers = vm.attach_output("cat", "");
    let mut stdin = open_stdio(
        &vm.uds(),
        "cat",
        "",
        StdioStream::Stdin,
        Duration::from_secs(10),
    )
    .unwrap();
    vm.start("cat").unwrap();
    let input: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
    stdin.write_all(&input).unwrap();
    stdin.shutdown(Shutdown::Write).unwrap();
    assert_eq!(vm.wait("cat", "", Duration::from_secs(60)).unwrap(), 0);
    let (out, _) = readers.collect_raw();
    assert_eq!(&out[..input.len()], &input[..]);
    assert_eq!(&out[input.len()..], b"done\n");
    vm.remove("cat").unwrap();

    // A process that never reads its attached (and still open) stdin exits normally.
    vm.create(
        "noread",
        &sh("echo bye; exit 4"),
        Stdio {
            stdin: true,
            stdout: true,
            stderr: true,
            ..Default::default()
        },
    )
    .unwrap();
    let readers = vm.attach_output("noread", "");
    let _stdin = open_stdio(
        &vm.uds(),
        "noread",
        "",
        StdioStream::Stdin,
        Duration::from_secs(10),
    )
    .unwrap();
    vm.start("noread").unwrap();
    assert_eq!(vm.wait("noread", "", Duration::from_secs(20)).unwrap(), 4);
    assert_eq!(readers.collect().0, "bye\n");
    vm.remove("noread").unwrap();

    TestVm::shutdown(vm);
}

#[test]
fn signals_execs_terminal_and_cgroups() {
    let vm = TestVm::boot();
    let a = vm.agent();

    // A long-running container.
    let mut s = sh("trap 'echo got TERM; exit 42' TERM; while true; do sleep 0.05; done");
    s["linux"]["resources"] = json!({"pids": {"limit": 64}});
    vm.create(
        "svc",
        &s,
        Stdio {
            stdout: true,
            stderr: true,
            ..Default::default()
        },
    )
    .unwrap();
    let readers = vm.attach_output("svc", "");
    vm.start("svc").unwrap();

    // Several execs at once, each with its own output.
    for i in 0..4 {
        let req = exec_req(
            "svc",
            &format!("e{i}"),
            &["sh", "-c", &format!("echo exec{i}; exit {i}")],
            Stdio {
                stdout: true,
                stderr: true,
                ..Default::default()
            },
        );
        a.call("ExecProcess", |c, ctx| c.exec_process(ctx, &req))
            .unwrap();
    }
    for i in 0..4 {
        let r = vm.attach_output("svc", &format!("e{i}"));
        assert_eq!(
            vm.wait("svc", &format!("e{i}"), Duration::from_secs(30))
                .unwrap(),
            i
        );
        assert_eq!(r.collect().0, format!("exec{i}\n"));
    }

    // Terminal exec: a pty (tty says so), \r\n line endings, resizable.
    let req = exec_req(
        "svc",
        "tty",
        &["sh", "-c", "sleep 0.3; tty; stty size"],
        Stdio {
            terminal: true,
            stdout: true,
            stdin: true,
            ..Default::default()
        },
    );
    a.call("ExecProcess", |c, ctx| c.exec_process(ctx, &req))
        .unwrap();
    let resize = ResizeTtyRequest {
        container_id: "svc".into(),
        exec_id: "tty".into(),
        width: 123,
        height: 45,
        ..Default::default()
    };
    a.call("ResizeTty", |c, ctx| c.resize_tty(ctx, &resize))
        .unwrap();
    let mut tty_out = open_stdio(
        &vm.uds(),
        "svc",
        "tty",
        StdioStream::Stdout,
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(vm.wait("svc", "tty", Duration::from_secs(30)).unwrap(), 0);
    let mut out = String::new();
    let _ = tty_out.read_to_string(&mut out);
    assert!(
        out.contains("/dev/pts/0\r\n") && out.contains("45 123\r\n"),
        "{out:?}"
    );

    // Real guest pids, stats, update, pause/resume.
    let pids = a
        .call("ListProcesses", |c, ctx| {
            c.list_processes(
                ctx,
                &ListProcessesRequest {
                    container_id: "svc".into(),
                    ..Default::default()
                },
            )
        })
        .unwrap();
    assert!(
        !pids.pids.is_empty() && pids.pids.iter().all(|p| *p > 1),
        "{:?}",
        pids.pids
    );
    let stats = |a: &myvm::agent_client::AgentClient| {
        a.call("StatsContainer", |c, ctx| {
            c.stats_container(
                ctx,
                &StatsContainerRequest {
                    container_id: "svc".into(),
                    ..Default::default()
                },
            )
        })
        .unwrap()
    };
    let st = stats(a);
    assert_eq!(st.pids.limit, 64);
    assert!(
        st.pids.current >= 1 && st.memory.usage_bytes > 0 && st.cpu.usage_usec > 0,
        "{st:?}"
    );
    let update = UpdateContainerRequest {
        container_id: "svc".into(),
        resources: br#"{"pids":{"limit":100},"memory":{"limit":134217728}}"#.to_vec(),
        ..Default::default()
    };
    a.call("UpdateContainer", |c, ctx| c.update_container(ctx, &update))
        .unwrap();
    let st = stats(a);
    assert_eq!((st.pids.limit, st.memory.limit_bytes), (100, 134217728));
    a.call("PauseContainer", |c, ctx| {
        c.pause_container(
            ctx,
            &PauseContainerRequest {
                container_id: "svc".into(),
                ..Default::default()
            },
        )
    })
    .unwrap();
    let before = stats(a).cpu.usage_usec;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        stats(a).cpu.usage_usec,
        before,
        "a paused container uses no CPU"
    );
    a.call("ResumeContainer", |c, ctx| {
        c.resume_container(
            ctx,
            &ResumeContainerRequest {
                container_id: "svc".into(),
                ..Default::default()
            },
        )
    })
    .unwrap();

    // SIGTERM is delivered to the container's init (its trap runs).
    vm.signal("svc", "", libc::SIGTERM, false).unwrap();
    assert_eq!(vm.wait("svc", "", Duration::from_secs(30)).unwrap(), 42);
    assert!(readers.collect().0.contains("got TERM"));

    // Exec into a stopped container: a clear error.
    let req = exec_req("svc", "late", &["true"], Stdio::default());
    let err = a
        .call("ExecProcess", |c, ctx| c.exec_process(ctx, &req))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not running"), "{err}");
    vm.remove("svc").unwrap();

    // SIGKILL of everything.
    vm.create("k", &sh("sleep 1000 & sleep 1000"), Stdio::default())
        .unwrap();
    vm.start("k").unwrap();
    vm.signal("k", "", libc::SIGKILL, true).unwrap();
    assert_eq!(vm.wait("k", "", Duration::from_secs(30)).unwrap(), 137);
    vm.remove("k").unwrap();

    // Memory limit: the hog is OOM-killed and an OOM event is reported.
    let mut s = sh("head -c 100000000 /dev/zero | tail > /dev/null");
    s["linux"]["resources"] = json!({"memory": {"limit": 16777216, "swap": 16777216}});
    let o = vm.run("oom", &s).unwrap();
    assert_ne!(o.status, 0, "{o:?}");
    let events = a
        .call("GetEvents", |c, ctx| {
            c.get_events(
                ctx,
                &GetEventsRequest {
                    timeout_ms: 0,
                    ..Default::default()
                },
            )
        })
        .unwrap();
    assert!(
        events
            .events
            .iter()
            .any(|e| e.container_id == "oom" && e.has_oom()),
        "{:?}",
        events.events
    );

    TestVm::shutdown(vm);
}
