use super::cli::Cli;
use super::*;
use clap::Parser;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("myvm-vmm-cfg-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Dir(PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn valid(d: &Path) -> VmmConfig {
    std::fs::write(d.join("vmlinux"), b"x").unwrap();
    std::fs::write(d.join("initrd"), b"x").unwrap();
    let mut c = VmmConfig::new(d.join("vmlinux"), d.join("serial.log"));
    c.initrd = Some(d.join("initrd"));
    c
}

#[test]
fn bad_configs_are_rejected_with_clear_errors() {
    let d = Dir(tmpdir("bad"));
    let ok = valid(&d.0);
    assert_eq!(ok.validate(), Ok(()));

    let mut c = ok.clone();
    c.kernel = d.0.join("nope");
    assert_eq!(
        c.validate(),
        Err(ConfigError::MissingKernel(d.0.join("nope")))
    );
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("does not exist"));

    let mut c = ok.clone();
    c.kernel = PathBuf::new();
    assert_eq!(c.validate(), Err(ConfigError::NoKernel));

    let mut c = ok.clone();
    c.initrd = Some(d.0.join("nope"));
    assert!(matches!(c.validate(), Err(ConfigError::MissingInitrd(_))));

    let mut c = ok.clone();
    c.memory_mib = 32;
    assert_eq!(c.validate(), Err(ConfigError::BadMemory(32)));
    assert!(c.validate().unwrap_err().to_string().contains("64..="));

    for v in [0, 33, 1000] {
        let mut c = ok.clone();
        c.vcpus = v;
        assert_eq!(c.validate(), Err(ConfigError::BadVcpus(v)));
    }

    let mut c = ok.clone();
    c.serial_log = d.0.join("missing-dir/serial.log");
    assert!(matches!(c.validate(), Err(ConfigError::SerialLogDir(_))));

    let mut c = ok.clone();
    c.cmdline = "a".repeat(2000);
    assert!(matches!(c.validate(), Err(ConfigError::CmdlineTooLong(_))));

    let mut c = ok.clone();
    c.cmdline = "console=ttyS0\n".into();
    assert_eq!(c.validate(), Err(ConfigError::CmdlineChars));

    let mut c = ok.clone();
    c.fs = vec![parse_fs_arg("a=/x").unwrap(), parse_fs_arg("a=/y").unwrap()];
    assert_eq!(c.validate(), Err(ConfigError::DuplicateFsTag("a".into())));

    let mut c = ok.clone();
    c.fs = vec![FsConfig {
        tag: "t".repeat(37),
        socket: "/x".into(),
        request_queues: 1,
    }];
    assert!(matches!(c.validate(), Err(ConfigError::BadFsTag(_))));

    let mut c = ok;
    c.fs = (0..20)
        .map(|i| parse_fs_arg(&format!("t{i}=/s")).unwrap())
        .collect();
    assert_eq!(c.validate(), Err(ConfigError::TooManyDevices(20)));
}

#[test]
fn fs_argument_syntax() {
    let f = parse_fs_arg("myvmfs=/run/fs.sock").unwrap();
    assert_eq!(
        (f.tag.as_str(), f.socket.as_path()),
        ("myvmfs", Path::new("/run/fs.sock"))
    );
    assert!(parse_fs_arg("noequals").is_err());
    assert!(parse_fs_arg("=/x").is_err());
    assert!(parse_fs_arg("tag=").is_err());
}

#[test]
fn cli_flags_override_the_json_file() {
    let d = Dir(tmpdir("cli"));
    let base = valid(&d.0);
    let json = d.0.join("vm.json");
    std::fs::write(&json, serde_json::to_string(&base).unwrap()).unwrap();
    let cli = Cli::try_parse_from([
        "myvm-vmm",
        "--config",
        json.to_str().unwrap(),
        "--vcpus",
        "4",
        "--memory-mib",
        "512",
        "--cmdline",
        "console=ttyS0 reboot=t",
        "--vsock-socket",
        "/run/v.sock",
        "--fs",
        "a=/run/a.sock",
        "--fs",
        "b=/run/b.sock",
        "--no-seccomp",
    ])
    .unwrap();
    let c = cli.into_config().unwrap();
    assert_eq!((c.vcpus, c.memory_mib), (4, 512));
    assert_eq!(c.kernel, base.kernel);
    assert_eq!(c.cmdline, "console=ttyS0 reboot=t");
    assert_eq!(c.vsock_socket.as_deref(), Some(Path::new("/run/v.sock")));
    assert_eq!(
        c.fs.iter().map(|f| f.tag.as_str()).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    assert!(!c.seccomp);
    assert_eq!(c.virtio_slots().len(), 3);
}

#[test]
fn json_file_alone_and_unknown_fields() {
    let d = Dir(tmpdir("json"));
    let base = valid(&d.0);
    let json = d.0.join("vm.json");
    let text = format!(
        r#"{{"kernel": {:?}, "serial_log": {:?}, "vcpus": 2,
            "fs": [{{"tag": "myvmfs", "socket": "/run/fs.sock"}}]}}"#,
        base.kernel, base.serial_log
    );
    std::fs::write(&json, text).unwrap();
    let c = VmmConfig::from_json_file(&json).unwrap();
    assert_eq!((c.vcpus, c.memory_mib, c.seccomp), (2, 256, true));
    assert_eq!(c.fs[0].request_queues, 1);
    c.validate().unwrap();

    std::fs::write(&json, r#"{"kernel": "/k", "serial_log": "/s", "vcpu": 2}"#).unwrap();
    let e = VmmConfig::from_json_file(&json).unwrap_err();
    assert!(e.to_string().contains("unknown field"), "{e}");

    let e = VmmConfig::from_json_file(&d.0.join("missing.json")).unwrap_err();
    assert!(matches!(e, ConfigError::ReadFile(..)));
}

#[test]
fn cli_without_kernel_fails_validation() {
    let cli = Cli::try_parse_from(["myvm-vmm", "--serial-log", "/tmp/x.log"]).unwrap();
    assert_eq!(cli.into_config(), Err(ConfigError::NoKernel));
}

#[test]
fn net_argument_syntax_and_errors() {
    let n = parse_net_arg("tap=tap0,mac=02:AB:cd:00:00:01,mtu=1400").unwrap();
    assert_eq!(n.tap, "tap0");
    assert_eq!(n.mac, MacAddr([2, 0xab, 0xcd, 0, 0, 1]));
    assert_eq!(n.mac.to_string(), "02:ab:cd:00:00:01");
    assert_eq!(n.mtu, Some(1400));
    // Any key order, mtu optional.
    let n = parse_net_arg("mac=02:00:00:00:00:01,tap=eth-tap").unwrap();
    assert_eq!((n.tap.as_str(), n.mtu, n.fd), ("eth-tap", None, None));
    // An inherited, already attached tap fd.
    let n = parse_net_arg("tap=t0,mac=02:00:00:00:00:01,fd=200").unwrap();
    assert_eq!(n.fd, Some(200));

    let err = |a: &str| parse_net_arg(a).unwrap_err().to_string();
    assert!(err("mac=02:00:00:00:00:01").contains("missing tap name"));
    assert!(err("tap=,mac=02:00:00:00:00:01").contains("missing tap name"));
    assert!(err("tap=t0").contains("missing MAC address"));
    assert!(err("tap=t0,mac=02:00:00:00:00:01,speed=10").contains("unknown key \"speed\""));
    assert!(err("tap=t0,tap=t1,mac=02:00:00:00:00:01").contains("tap given twice"));
    assert!(err("tap=t0,mac").contains("is not key=value"));
    assert!(err("tap=t0,mac=02:00:00:00:00:01,mtu=big").contains("mtu \"big\" is not a number"));
    assert!(err("tap=t0,mac=02:00:00:00:00:01,fd=1").contains("fd \"1\" is not a number above 2"));
    assert!(err("tap=a/b,mac=02:00:00:00:00:01").contains("bad tap name \"a/b\""));
    assert!(err("tap=waytoolongname16,mac=02:00:00:00:00:01").contains("longer than 15 bytes"));
    for (mac, why) in [
        ("02:00:00:00:00", "six hex octets"),
        ("02:00:00:00:00:01:02", "six hex octets"),
        ("02:00:00:00:00:zz", "six hex octets"),
        ("2:00:00:00:00:01", "six hex octets"),
        ("01:00:5e:00:00:01", "multicast"),
        ("00:00:00:00:00:00", "all-zero"),
    ] {
        let e = err(&format!("tap=t0,mac={mac}"));
        assert!(
            e.contains(&format!("bad MAC address {mac:?}")) && e.contains(why),
            "{e}"
        );
    }
}

#[test]
fn net_devices_are_validated_and_get_slots_after_fs() {
    let d = Dir(tmpdir("net"));
    let mut c = valid(&d.0);
    c.vsock_socket = Some("/v".into());
    c.fs = vec![parse_fs_arg("a=/x").unwrap()];
    c.net = vec![
        parse_net_arg("tap=t0,mac=02:00:00:00:00:01").unwrap(),
        parse_net_arg("tap=t1,mac=02:00:00:00:00:02,mtu=9000").unwrap(),
    ];
    assert_eq!(c.validate(), Ok(()));
    assert_eq!(c.virtio_slots().len(), 4);

    let mut bad = c.clone();
    bad.net[1].tap = "t0".into();
    assert_eq!(bad.validate(), Err(ConfigError::DuplicateTap("t0".into())));
    for mtu in [0, 67, 65536] {
        let mut bad = c.clone();
        bad.net[0].mtu = Some(mtu);
        assert_eq!(bad.validate(), Err(ConfigError::BadMtu("t0".into(), mtu)));
    }
    let mut bad = c.clone();
    bad.net[0].tap = "a b".into();
    assert!(matches!(bad.validate(), Err(ConfigError::BadTapName(..))));
    let mut bad = c;
    bad.net = (0..18)
        .map(|i| parse_net_arg(&format!("tap=t{i},mac=02:00:00:00:00:01")).unwrap())
        .collect();
    assert_eq!(bad.validate(), Err(ConfigError::TooManyDevices(20)));
}

#[test]
fn net_in_json_and_on_the_command_line() {
    let d = Dir(tmpdir("netjson"));
    let base = valid(&d.0);
    let json = d.0.join("vm.json");
    let text = format!(
        r#"{{"kernel": {:?}, "serial_log": {:?},
            "net": [{{"tap": "tap0", "mac": "02:00:00:00:00:01", "mtu": 1450}}]}}"#,
        base.kernel, base.serial_log
    );
    std::fs::write(&json, text).unwrap();
    let c = VmmConfig::from_json_file(&json).unwrap();
    assert_eq!(
        c.net,
        vec![parse_net_arg("tap=tap0,mac=02:00:00:00:00:01,mtu=1450").unwrap()]
    );
    // Round trip (the MAC is a string in JSON).
    let s = serde_json::to_string(&c).unwrap();
    assert!(s.contains(r#""mac":"02:00:00:00:00:01""#), "{s}");
    assert_eq!(serde_json::from_str::<VmmConfig>(&s).unwrap(), c);
    // A bad MAC in JSON is a parse error naming it.
    std::fs::write(
        &json,
        r#"{"kernel": "/k", "serial_log": "/s", "net": [{"tap": "t", "mac": "ff:ff:ff:ff:ff:ff"}]}"#,
    )
    .unwrap();
    let e = VmmConfig::from_json_file(&json).unwrap_err().to_string();
    assert!(e.contains("bad MAC address \"ff:ff:ff:ff:ff:ff\""), "{e}");

    // Flags replace the file's list.
    std::fs::write(&json, serde_json::to_string(&c).unwrap()).unwrap();
    let cli = Cli::try_parse_from([
        "myvm-vmm",
        "--config",
        json.to_str().unwrap(),
        "--net",
        "tap=a,mac=02:00:00:00:00:0a",
        "--net",
        "tap=b,mac=02:00:00:00:00:0b,mtu=9000",
    ])
    .unwrap();
    let c = cli.into_config().unwrap();
    assert_eq!(
        c.net
            .iter()
            .map(|n| (n.tap.as_str(), n.mtu))
            .collect::<Vec<_>>(),
        vec![("a", None), ("b", Some(9000))]
    );
    // clap reports a bad value with our message.
    let e = Cli::try_parse_from(["myvm-vmm", "--net", "tap=a"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing MAC address"), "{e}");
}

#[test]
fn balloon_and_control_channel_flags() {
    let d = Dir(tmpdir("balloon"));
    let ok = valid(&d.0);
    let k = ok.kernel.display().to_string();
    let s = ok.serial_log.display().to_string();
    let cli = Cli::try_parse_from([
        "myvm-vmm",
        "--kernel",
        &k,
        "--serial-log",
        &s,
        "--memory-mib",
        "512",
        "--balloon-mib",
        "128",
        "--control-fd",
        "199",
    ])
    .unwrap();
    let c = cli.into_config().unwrap();
    assert_eq!((c.balloon_mib, c.control_fd), (Some(128), Some(199)));
    // The balloon is a device: the last slot.
    assert_eq!(c.virtio_device_count(), 1);
    let mut bad = c.clone();
    bad.balloon_mib = Some(513);
    assert_eq!(bad.validate(), Err(ConfigError::BadBalloon(513, 512)));
    bad.balloon_mib = Some(512);
    assert_eq!(bad.validate(), Ok(()));
    bad.control_fd = Some(2);
    assert_eq!(bad.validate(), Err(ConfigError::BadControlFd(2)));
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("inherited descriptor"));
}
