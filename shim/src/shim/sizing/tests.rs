use std::collections::HashMap;

use serde_json::json;

use super::*;

const HOST: Host = Host {
    memory_mib: 24 * 1024,
    cpus: 2,
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

fn sz(memory_mib: u32, vcpus: u32) -> Sizing {
    Sizing { memory_mib, vcpus }
}

fn ask(mib: u64, cpus: u64) -> Ask {
    Ask {
        memory_bytes: (mib > 0).then_some(mib << 20),
        cpus: (cpus > 0).then_some(cpus),
    }
}

#[test]
fn a_plan_boots_with_room_to_grow_within_the_maxima() {
    // Hotplug: the guest is held to its size with mem=; the VM has 1 GiB more.
    let p = Plan::new(&Config::default(), HOST, sz(256, 1));
    assert_eq!(p.growth, Growth::Hotplug);
    assert_eq!(
        (p.initial, p.ceiling),
        (sz(256, 1), sz(256 + 1024, 2)),
        "the host's CPUs"
    );
    assert_eq!(p.kernel_param().as_deref(), Some("mem=256M"));
    assert_eq!((p.balloon_mib(256), p.guest_ram_mib(640)), (0, 640));
    assert_eq!(p.vm_memory_mib, 1280);
    // Blocks are added above the boot memory's last (partial) block.
    let p = Plan::new(&Config::default(), HOST, sz(1120, 2));
    assert_eq!(
        (p.initial.memory_mib, p.ceiling.memory_mib, p.vm_memory_mib),
        (1120, 2144, 2176)
    );
    assert_eq!(p.kernel_param().as_deref(), Some("mem=1120M"));
    // Too big at boot for mem=: a balloon holds the extra but what that RAM costs the guest.
    let p = Plan::new(&Config::default(), HOST, sz(3000, 1));
    assert_eq!(p.growth, Growth::Balloon);
    assert_eq!(
        (p.initial.memory_mib, p.ceiling.memory_mib, p.vm_memory_mib),
        (3000, 4024, 4024)
    );
    assert_eq!(p.kernel_param(), None);
    assert_eq!(p.balloon_mib(3000), 1024 * 975 / 1000);
    assert_eq!(p.balloon_mib(4024), 0);
    // A grown VM offers (to 1 MiB) what a VM booted at that size would.
    for m in [3000u32, 3500, 4024] {
        let available = p.guest_ram_mib(m)
            - GUEST_FIXED_MIB
            - u64::from(p.ceiling.memory_mib) * GUEST_PER_MILLE / 1000;
        let booted = u64::from(m) - GUEST_FIXED_MIB - u64::from(m) * GUEST_PER_MILLE / 1000;
        assert!(
            available.abs_diff(booted) <= 1,
            "{m}: {available} vs {booted}"
        );
    }
    // Within max_memory_mib and max_vcpus; never below the pod's own size.
    let c = Config {
        max_memory_mib: 600,
        max_vcpus: 1,
        ..Config::default()
    };
    let p = Plan::new(&c, HOST, sz(256, 1));
    assert_eq!((p.ceiling, p.growth), (sz(512, 1), Growth::Hotplug));
    let p = Plan::new(&c, HOST, sz(600, 1));
    assert_eq!((p.ceiling, p.growth), (sz(600, 1), Growth::Fixed));
    assert_eq!((p.vm_memory_mib, p.kernel_param()), (600, None));
    let c = Config {
        memory_growth_mib: 0,
        ..Config::default()
    };
    let p = Plan::new(&c, HOST, sz(500, 4));
    assert_eq!(
        (p.initial, p.ceiling, p.growth),
        (sz(500, 4), sz(500, 4), Growth::Fixed)
    );
    assert_eq!((p.balloon_mib(500), p.kernel_param()), (0, None));
}

#[test]
fn a_pod_needs_the_sum_of_its_containers() {
    let initial = sz(256, 1);
    assert_eq!(pod_need(initial, [].iter()), initial);
    assert_eq!(
        pod_need(initial, [ask(0, 0), ask(32, 0)].iter()),
        sz(256, 1)
    );
    let need = pod_need(initial, [ask(512, 1), ask(512, 2), ask(0, 0)].iter());
    assert_eq!(need, sz(vm_memory_for(1024) as u32, 3));
}

#[test]
fn growth_up_to_the_ceiling_and_a_clear_error_beyond() {
    let p = Plan::new(&Config::default(), HOST, sz(256, 1));
    let now = p.initial;
    assert_eq!(grow(&p, now, sz(256, 1)).unwrap(), now);
    assert_eq!(grow(&p, now, sz(200, 1)).unwrap(), now);
    assert_eq!(grow(&p, now, sz(1120, 2)).unwrap(), sz(1120, 2));
    // vCPUs stop at what the VM has; memory never shrinks.
    assert_eq!(grow(&p, sz(1120, 2), sz(512, 8)).unwrap(), sz(1120, 2));
    let e = grow(&p, now, sz(2048, 1)).unwrap_err();
    assert!(
        e.contains("2048 MiB VM")
            && e.contains("grow to 1280 MiB")
            && e.contains("memory_growth_mib"),
        "{e}"
    );
}
