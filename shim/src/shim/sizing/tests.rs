use std::collections::HashMap;

use serde_json::json;

use super::*;

const HOST: Host = Host {
    memory_mib: 24 * 1024,
};

fn cri(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    let mut a: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    a.insert("io.kubernetes.cri.container-type".into(), "sandbox".into());
    a
}

fn limits(memory: i64, quota: i64, period: i64) -> serde_json::Value {
    json!({"linux": {"resources": {"memory": {"limit": memory}, "cpu": {"quota": quota, "period": period}}}})
}

#[test]
fn a_plain_container_gets_its_own_limits() {
    let c = Config::default();
    // ctr run --memory-limit 1073741824 --cpus 2
    let s = sizing(
        &c,
        HOST,
        &HashMap::new(),
        &limits(1 << 30, 200_000, 100_000),
    )
    .unwrap();
    assert_eq!(s.vcpus, 2);
    assert_eq!(u64::from(s.memory_mib), vm_memory_for(1024));
    assert!(container_room(u64::from(s.memory_mib)) >= 1024);
    // No limits: the configured defaults; small limits never shrink the VM.
    let none = sizing(&c, HOST, &HashMap::new(), &json!({})).unwrap();
    assert_eq!((none.memory_mib, none.vcpus), (256, 1));
    let small = sizing(
        &c,
        HOST,
        &HashMap::new(),
        &limits(32 << 20, 50_000, 100_000),
    )
    .unwrap();
    assert_eq!((small.memory_mib, small.vcpus), (256, 1));
}

#[test]
fn a_cri_pod_is_sized_by_its_annotations_not_by_the_pause_container() {
    let c = Config::default();
    let a = cri(&[
        ("io.kubernetes.cri.sandbox-memory", "1073741824"),
        ("io.kubernetes.cri.sandbox-cpu-quota", "150000"),
        ("io.kubernetes.cri.sandbox-cpu-period", "100000"),
    ]);
    let s = sizing(&c, HOST, &a, &limits(1 << 20, 0, 0)).unwrap();
    assert_eq!((u64::from(s.memory_mib), s.vcpus), (vm_memory_for(1024), 2));
    // A CRI pod without resources gets the defaults, whatever its sandbox spec says.
    let s = sizing(&c, HOST, &cri(&[]), &limits(8 << 30, 800_000, 100_000)).unwrap();
    assert_eq!((s.memory_mib, s.vcpus), (256, 1));
}

#[test]
fn requests_over_the_maxima_are_refused_with_the_key_to_change() {
    let c = Config {
        max_memory_mib: 2048,
        max_vcpus: 2,
        ..Config::default()
    };
    let e = sizing(&c, HOST, &HashMap::new(), &limits(4 << 30, 0, 0)).unwrap_err();
    assert!(matches!(
        e,
        SizingError::Memory {
            asked_mib: 4096,
            max_mib: 2048,
            ..
        }
    ));
    assert!(e.to_string().contains("max_memory_mib"), "{e}");
    let e = sizing(&c, HOST, &HashMap::new(), &limits(0, 300_000, 100_000)).unwrap_err();
    assert_eq!(
        e,
        SizingError::Cpus {
            what: "the container",
            asked: 3,
            max: 2
        }
    );
    // 0 means the host's memory.
    let e = sizing(
        &Config::default(),
        HOST,
        &HashMap::new(),
        &limits(30 << 30, 0, 0),
    )
    .unwrap_err();
    assert!(matches!(e, SizingError::Memory { max_mib, .. } if max_mib == HOST.memory_mib));
    // A configured default above the maximum is named as such.
    let c = Config {
        memory_mib: 4096,
        max_memory_mib: 1024,
        ..Config::default()
    };
    let e = sizing(&c, HOST, &HashMap::new(), &json!({})).unwrap_err();
    assert!(e.to_string().starts_with("memory_mib asks"), "{e}");
}

#[test]
fn memory_formula_matches_the_measured_guest_overhead() {
    // Measured MemTotal − MemAvailable of an idle guest: 42, 61, 86 MiB at 256, 1024, 2048.
    for (vm, measured) in [(256u64, 42u64), (1024, 61), (2048, 86)] {
        let model = GUEST_FIXED_MIB + vm * GUEST_PER_MILLE / 1000;
        assert!(
            model.abs_diff(measured) <= 8,
            "{vm} MiB: model {model}, measured {measured}"
        );
    }
}

#[test]
fn container_room_inverts_vm_memory_for() {
    for limit in (0..20_000u64).step_by(7) {
        let vm = vm_memory_for(limit);
        assert!(container_room(vm) >= limit, "limit {limit}: vm {vm}");
        assert!(
            container_room(vm) < limit + 8,
            "limit {limit}: vm {vm} wastes"
        );
        assert_eq!(vm % 2, 0);
    }
}

#[test]
fn check_fits_refuses_a_container_bigger_than_its_pods_vm() {
    let vm = Sizing {
        memory_mib: 256,
        vcpus: 1,
    };
    assert!(check_fits(vm, &json!({})).is_ok());
    assert!(check_fits(vm, &limits(64 << 20, 0, 0)).is_ok());
    let e = check_fits(vm, &limits(1 << 30, 0, 0)).unwrap_err();
    assert!(e.contains("1024 MiB") && e.contains("256 MiB"), "{e}");
}
