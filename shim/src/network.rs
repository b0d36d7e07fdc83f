//! Pod networking on the host, Kata's `tcfilter` model. CNI has put a veth with the pod's IP in
//! the pod's network namespace. There, for each such interface, we create a tap and connect the
//! two with tc: everything arriving on the veth is redirected out of the tap (into the VM), and
//! everything the VM sends on the tap is redirected out of the veth. The VMM runs in that
//! namespace and attaches the tap as virtio-net with the veth's MAC; the agent gives the guest
//! interface the veth's addresses, routes and MTU. The pod keeps its identity; nothing on the
//! host outside the pod's namespace changes.
//!
//! The namespace is read and changed with iproute2 (`ip -j`, `tc`) run inside it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use myvm_protocol::agent::{Interface, IpAddress, Route};
use serde_json::Value;

use crate::hypervisor::NetDevice;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("`{cmd}` in {netns}: {msg}")]
    Command {
        cmd: String,
        netns: PathBuf,
        msg: String,
    },
    #[error("unexpected output of `{cmd}`: {msg}")]
    Parse { cmd: String, msg: String },
}

/// One pod interface: CNI's veth and the tap we paired it with.
#[derive(Debug, Clone, PartialEq)]
pub struct PodInterface {
    pub veth: String,
    pub tap: String,
    pub mac: String,
    pub mtu: u32,
    pub addresses: Vec<(String, u32)>,
}

/// The pod network as set up for one sandbox; `teardown` undoes it.
#[derive(Debug)]
pub struct PodNetwork {
    pub netns: PathBuf,
    pub interfaces: Vec<PodInterface>,
    pub routes: Vec<Route>,
}

/// Runs `program args` inside the network namespace `netns`; its stdout.
pub(crate) fn run_in(netns: &Path, program: &str, args: &[&str]) -> Result<String, NetworkError> {
    let ns = std::fs::File::open(netns).map_err(|source| NetworkError::Netns {
        path: netns.into(),
        source,
    })?;
    let mut cmd = Command::new(program);
    cmd.args(args);
    crate::process::join_netns(&mut cmd, &ns);
    let cmdline = format!("{program} {}", args.join(" "));
    let out = cmd.output().map_err(|e| NetworkError::Command {
        cmd: cmdline.clone(),
        netns: netns.into(),
        msg: e.to_string(),
    })?;
    drop(ns);
    if !out.status.success() {
        return Err(NetworkError::Command {
            cmd: cmdline,
            netns: netns.into(),
            msg: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Ethernet interfaces of `ip -j addr show` (loopback and our own taps left out).
pub fn parse_interfaces(json: &str) -> Result<Vec<PodInterface>, NetworkError> {
    let bad = |msg: String| NetworkError::Parse {
        cmd: "ip -j addr show".into(),
        msg,
    };
    let links: Vec<Value> = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    let mut found = Vec::new();
    for l in links {
        let name = l["ifname"].as_str().unwrap_or_default().to_string();
        if l["link_type"] != "ether" || name.ends_with("_myvm") {
            continue;
        }
        let mac = l["address"]
            .as_str()
            .ok_or_else(|| bad(format!("{name} has no MAC")))?
            .to_string();
        let addresses = l["addr_info"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|i| i["family"] == "inet" && i["scope"] == "global")
                    .filter_map(|i| {
                        Some((
                            i["local"].as_str()?.to_string(),
                            i["prefixlen"].as_u64()? as u32,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let tap = format!("tap{}_myvm", found.len());
        found.push(PodInterface {
            veth: name,
            tap,
            mac,
            mtu: l["mtu"].as_u64().unwrap_or(1500) as u32,
            addresses,
        });
    }
    Ok(found)
}

/// The IPv4 routes of `ip -j -4 route show` that leave through one of `interfaces`.
pub fn parse_routes(json: &str, interfaces: &[PodInterface]) -> Result<Vec<Route>, NetworkError> {
    let routes: Vec<Value> = serde_json::from_str(json).map_err(|e| NetworkError::Parse {
        cmd: "ip -j -4 route show".into(),
        msg: e.to_string(),
    })?;
    Ok(routes
        .iter()
        .filter_map(|r| {
            let dev = r["dev"].as_str()?;
            let i = interfaces.iter().find(|i| i.veth == dev)?;
            let dest = r["dst"].as_str()?;
            // A bare address is a host route.
            let dest = if dest == "default" || dest.contains('/') {
                dest.to_string()
            } else {
                format!("{dest}/32")
            };
            Some(Route {
                dest,
                gateway: r["gateway"].as_str().unwrap_or_default().to_string(),
                device_mac: i.mac.clone(),
                ..Default::default()
            })
        })
        .collect())
}

impl PodNetwork {
    /// Reads the pod's interfaces in `netns` and connects each to a new tap.
    pub fn setup(netns: &Path) -> Result<PodNetwork, NetworkError> {
        let interfaces = parse_interfaces(&run_in(netns, "ip", &["-j", "addr", "show"])?)?;
        let routes = parse_routes(
            &run_in(netns, "ip", &["-j", "-4", "route", "show"])?,
            &interfaces,
        )?;
        let net = PodNetwork {
            netns: netns.into(),
            interfaces,
            routes,
        };
        for i in &net.interfaces {
            if let Err(e) = net.connect(i) {
                net.teardown();
                return Err(e);
            }
        }
        tracing::info!(netns = %netns.display(), interfaces = ?net.interfaces, "pod network connected");
        Ok(net)
    }

    fn connect(&self, i: &PodInterface) -> Result<(), NetworkError> {
        let ns = &self.netns;
        let mtu = i.mtu.to_string();
        run_in(
            ns,
            "ip",
            &["tuntap", "add", "dev", &i.tap, "mode", "tap", "vnet_hdr"],
        )?;
        run_in(ns, "ip", &["link", "set", &i.tap, "mtu", &mtu, "up"])?;
        for (from, to) in [(&i.veth, &i.tap), (&i.tap, &i.veth)] {
            run_in(ns, "tc", &["qdisc", "add", "dev", from, "ingress"])?;
            run_in(
                ns,
                "tc",
                &[
                    "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32",
                    "match", "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
                ],
            )?;
        }
        Ok(())
    }

    /// Removes the taps and the redirects (best effort: the namespace may already be gone).
    pub fn teardown(&self) {
        for i in &self.interfaces {
            let _ = run_in(
                &self.netns,
                "tc",
                &["qdisc", "del", "dev", &i.veth, "ingress"],
            );
            let _ = run_in(&self.netns, "ip", &["link", "del", &i.tap]);
        }
    }

    /// The VM's network devices.
    pub fn devices(&self) -> Vec<NetDevice> {
        self.interfaces
            .iter()
            .map(|i| NetDevice {
                tap: i.tap.clone(),
                mac: i.mac.clone(),
                mtu: i.mtu,
            })
            .collect()
    }

    /// What the agent needs to configure the guest side.
    pub fn guest_interfaces(&self) -> Vec<Interface> {
        self.interfaces
            .iter()
            .map(|i| Interface {
                mac: i.mac.clone(),
                mtu: i.mtu,
                addresses: i
                    .addresses
                    .iter()
                    .map(|(a, p)| IpAddress {
                        address: a.clone(),
                        prefix_len: *p,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDRS: &str = r#"[
      {"ifindex":1,"ifname":"lo","mtu":65536,"link_type":"loopback","address":"00:00:00:00:00:00",
       "addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host"}]},
      {"ifindex":3,"link_index":9,"ifname":"eth0","mtu":1450,"link_type":"ether",
       "address":"8a:1f:00:aa:bb:cc","link_netnsid":0,
       "addr_info":[{"family":"inet","local":"10.250.7.5","prefixlen":24,"scope":"global"},
                    {"family":"inet6","local":"fe80::1","prefixlen":64,"scope":"link"}]}]"#;

    #[test]
    fn interfaces_and_routes_from_iproute2() {
        let i = parse_interfaces(ADDRS).unwrap();
        assert_eq!(
            i,
            vec![PodInterface {
                veth: "eth0".into(),
                tap: "tap0_myvm".into(),
                mac: "8a:1f:00:aa:bb:cc".into(),
                mtu: 1450,
                addresses: vec![("10.250.7.5".into(), 24)],
            }]
        );
        let routes = parse_routes(
            r#"[{"dst":"default","gateway":"10.250.7.1","dev":"eth0"},
                {"dst":"10.250.7.0/24","dev":"eth0","protocol":"kernel","scope":"link","prefsrc":"10.250.7.5"},
                {"dst":"10.1.2.3","gateway":"10.250.7.1","dev":"eth0"},
                {"dst":"192.168.0.0/16","dev":"other0"}]"#,
            &i,
        )
        .unwrap();
        let r: Vec<_> = routes
            .iter()
            .map(|r| (r.dest.as_str(), r.gateway.as_str()))
            .collect();
        assert_eq!(
            r,
            [
                ("default", "10.250.7.1"),
                ("10.250.7.0/24", ""),
                ("10.1.2.3/32", "10.250.7.1")
            ]
        );
        assert!(parse_interfaces("not json").is_err());
    }

    /// Real iproute2 and tc in a throw-away namespace: taps and redirects appear, then go.
    #[test]
    #[ignore = "needs root: network namespaces, veths, taps (make test runs it)"]
    fn connects_and_disconnects_a_veth() {
        assert!(nix::unistd::geteuid().is_root(), "needs root");
        let name = format!("myvmtest{}", std::process::id());
        let sh = |c: &str| {
            let ok = Command::new("sh")
                .arg("-c")
                .arg(c)
                .status()
                .unwrap()
                .success();
            assert!(ok, "{c}");
        };
        sh(&format!("ip netns add {name}"));
        let ns = PathBuf::from(format!("/var/run/netns/{name}"));
        sh(&format!(
            "ip -n {name} link add eth0 type veth peer name peer0 && \
             ip -n {name} addr add 10.77.0.2/24 dev eth0 && ip -n {name} link set eth0 up && \
             ip -n {name} route add default via 10.77.0.1"
        ));
        let result = std::panic::catch_unwind(|| {
            let net = PodNetwork::setup(&ns).unwrap();
            assert_eq!(
                net.interfaces.len(),
                2,
                "eth0 and its peer: {:?}",
                net.interfaces
            );
            let eth0 = net.interfaces.iter().find(|i| i.veth == "eth0").unwrap();
            assert_eq!(eth0.addresses, vec![("10.77.0.2".to_string(), 24)]);
            assert!(net
                .routes
                .iter()
                .any(|r| r.dest == "default" && r.gateway == "10.77.0.1"));
            let filters = run_in(&ns, "tc", &["filter", "show", "dev", "eth0", "ingress"]).unwrap();
            assert!(
                filters.contains(&format!("redirect to device {}", eth0.tap))
                    || filters.contains(&format!("Redirect to device {}", eth0.tap)),
                "{filters}"
            );
            net.teardown();
            let links = run_in(&ns, "ip", &["link"]).unwrap();
            assert!(!links.contains("_myvm"), "{links}");
            let bad = PodNetwork::setup(Path::new("/nonexistent/netns")).unwrap_err();
            assert!(bad.to_string().contains("/nonexistent/netns"), "{bad}");
        });
        sh(&format!("ip netns del {name}"));
        result.unwrap();
    }
}
