//! `ctr run` with bind mounts (shared into the VM through virtio-fs) and with containerd's
//! runtime option `ConfigPath` (`--runtime-config-path`), good and bad.

use myvm_tests::{containerd::Containerd, TempDir};

const RT: &str = "io.containerd.myvm.v2";
const IMAGE: &str = "localhost/busybox:latest";

fn out(o: &std::process::Output) -> (Option<i32>, String, String) {
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Nothing of container `id` is left in the shared directory or the mount table.
fn assert_no_leftovers(id: &str) {
    let shared = myvm::shim::sandbox::shared_dir("default", id);
    assert!(!shared.exists(), "{} left behind", shared.display());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        !mounts.contains(&shared.display().to_string()),
        "mounts left:\n{mounts}"
    );
}

#[test]
fn bind_mounts_are_shared_both_ways_and_read_only_holds() {
    let c = Containerd::start();
    let host = TempDir::new("myvm-vol");
    let vol = host.path().join("vol");
    std::fs::create_dir(&vol).unwrap();
    std::fs::write(vol.join("in"), "from host\n").unwrap();
    let ro = host.path().join("ro.txt");
    std::fs::write(&ro, "read only\n").unwrap();
    let o = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RT,
        "--mount",
        &format!("type=bind,src={},dst=/data,options=rbind:rw", vol.display()),
        "--mount",
        &format!(
            "type=bind,src={},dst=/etc/ro.txt,options=rbind:ro",
            ro.display()
        ),
        IMAGE,
        "vols",
        "sh",
        "-c",
        "cat /data/in /etc/ro.txt; echo from guest > /data/out; \
         echo x > /etc/ro.txt 2>/dev/null || echo ro-refused",
    ]);
    let (code, stdout, stderr) = out(&o);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(stdout, "from host\nread only\nro-refused\n");
    assert_eq!(
        std::fs::read_to_string(vol.join("out")).unwrap(),
        "from guest\n"
    );
    assert_eq!(std::fs::read_to_string(&ro).unwrap(), "read only\n");
    assert_no_leftovers("vols");

    // A source that does not exist: a clear error, nothing left.
    let o = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RT,
        "--mount",
        "type=bind,src=/nonexistent/myvm-vol,dst=/data,options=rbind",
        IMAGE,
        "novol",
        "true",
    ]);
    let (code, _, stderr) = out(&o);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("/nonexistent/myvm-vol does not exist"),
        "unclear error: {stderr}"
    );
    let _ = c.ctr(&["container", "rm", "novol"]);
    assert_no_leftovers("novol");
}

#[test]
fn runtime_option_config_path_is_honoured_and_checked() {
    let c = Containerd::start();
    let dir = TempDir::new("myvm-cfg");
    let cfg = dir.path().join("small.toml");
    std::fs::write(
        &cfg,
        "memory_mib = 160\nvcpus = 2\nkernel_params = \"myvm.test=42\"\n",
    )
    .unwrap();
    let o = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RT,
        "--runtime-config-path",
        cfg.to_str().unwrap(),
        IMAGE,
        "small",
        "sh",
        "-c",
        "grep MemTotal /proc/meminfo; nproc; cat /proc/cmdline",
    ]);
    let (code, stdout, stderr) = out(&o);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    let kib: u64 = stdout
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {stdout:?}"));
    // 160 MiB of guest RAM less the kernel's own (the default is 256 MiB).
    assert!(
        (100 * 1024..=160 * 1024).contains(&kib),
        "MemTotal {kib} kB"
    );
    assert_eq!(stdout.lines().nth(1), Some("2"), "{stdout}");
    // kernel_params reach the guest kernel's command line, after myvm's own.
    let cmdline = stdout.lines().nth(2).unwrap_or_default();
    assert!(
        cmdline.starts_with("console=ttyS0") && cmdline.contains(" myvm.test=42"),
        "{cmdline}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "backend = \"warp-drive\"\n").unwrap();
    for (path, want) in [
        (bad.to_str().unwrap(), "warp-drive"),
        ("/nonexistent/myvm.toml", "/nonexistent/myvm.toml"),
    ] {
        let o = c.ctr(&[
            "run",
            "--rm",
            "--runtime",
            RT,
            "--runtime-config-path",
            path,
            IMAGE,
            "badcfg",
            "true",
        ]);
        let (code, _, stderr) = out(&o);
        assert_ne!(code, Some(0));
        assert!(
            stderr.contains("ConfigPath") && stderr.contains(want),
            "unclear error: {stderr}"
        );
        let _ = c.ctr(&["container", "rm", "badcfg"]);
        assert_no_leftovers("badcfg");
    }
}
