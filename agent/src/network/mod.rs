//! The pod's network inside the guest: the shim hands over what CNI configured on the pod's
//! veth (MAC, MTU, addresses, routes); the virtio-net device carries the same MAC, so the
//! interface is found by it and configured the same way. Containers share this network stack.

mod netlink;

use std::net::IpAddr;

use anyhow::{anyhow, bail, Context, Result};
use myvm_protocol::agent::{Interface, Route};

use self::netlink::Netlink;

/// Brings the loopback interface up (every pod has localhost).
pub fn loopback_up() -> Result<()> {
    let lo = nix::net::if_::if_nametoindex("lo").context("no loopback interface")?;
    Netlink::open()
        .and_then(|mut nl| nl.link_up(lo, None))
        .context("setting lo up")
}

/// The guest interface with this MAC address (as /sys/class/net shows it).
fn interface_by_mac(mac: &str) -> Result<(String, u32)> {
    let want = mac.to_ascii_lowercase();
    for e in std::fs::read_dir("/sys/class/net").context("/sys/class/net")? {
        let e = e?;
        let addr = std::fs::read_to_string(e.path().join("address")).unwrap_or_default();
        if addr.trim().eq_ignore_ascii_case(&want) {
            let name = e.file_name().to_string_lossy().into_owned();
            let index = nix::net::if_::if_nametoindex(name.as_str())
                .with_context(|| format!("index of {name}"))?;
            return Ok((name, index));
        }
    }
    bail!("no guest network interface has MAC {mac} (is the virtio-net device there?)")
}

fn parse_cidr(s: &str) -> Result<(IpAddr, u8)> {
    let (ip, len) = s
        .split_once('/')
        .ok_or_else(|| anyhow!("{s:?} is not address/prefix"))?;
    let ip: IpAddr = ip.parse().with_context(|| format!("address in {s:?}"))?;
    let len: u8 = len.parse().with_context(|| format!("prefix in {s:?}"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if len > max {
        bail!("prefix /{len} is too long for {ip}");
    }
    Ok((ip, len))
}

/// Configures the interfaces and routes; everything is validated (it comes from the host,
/// but a bad value must be a clear error, not a half-configured guest).
pub fn configure(interfaces: &[Interface], routes: &[Route]) -> Result<()> {
    let mut nl = Netlink::open().context("rtnetlink socket")?;
    let mut index_of_mac = std::collections::HashMap::new();
    for i in interfaces {
        let (name, index) = interface_by_mac(&i.mac)?;
        if i.mtu != 0 && !(68..=65535).contains(&i.mtu) {
            bail!("{name}: MTU {} out of range", i.mtu);
        }
        nl.link_up(index, (i.mtu != 0).then_some(i.mtu))
            .with_context(|| format!("{name}: link up, MTU {}", i.mtu))?;
        for a in &i.addresses {
            let ip: IpAddr = a
                .address
                .parse()
                .with_context(|| format!("{name}: address {:?}", a.address))?;
            let (ip, len) = parse_cidr(&format!("{ip}/{}", a.prefix_len))?;
            nl.add_address(index, ip, len)
                .with_context(|| format!("{name}: adding {ip}/{len}"))?;
        }
        tracing::info!(interface = name, mac = i.mac, mtu = i.mtu, addresses = ?i.addresses.iter().map(|a| format!("{}/{}", a.address, a.prefix_len)).collect::<Vec<_>>(), "interface configured");
        index_of_mac.insert(i.mac.to_ascii_lowercase(), index);
    }
    // On-link routes first: a gateway must be reachable when its route is added.
    let mut ordered: Vec<&Route> = routes.iter().collect();
    ordered.sort_by_key(|r| !r.gateway.is_empty());
    for r in ordered {
        let index = *index_of_mac
            .get(&r.device_mac.to_ascii_lowercase())
            .ok_or_else(|| {
                anyhow!(
                    "route {} leaves through unknown MAC {}",
                    r.dest,
                    r.device_mac
                )
            })?;
        let dest = match r.dest.as_str() {
            "default" | "" => None,
            d => Some(parse_cidr(d)?),
        };
        let gateway = match r.gateway.as_str() {
            "" => None,
            g => Some(
                g.parse::<IpAddr>()
                    .with_context(|| format!("gateway {g:?}"))?,
            ),
        };
        match nl.add_route(dest, gateway, index) {
            Ok(()) => {}
            // The kernel made the subnet route when the address was added.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("route {} via {:?}", r.dest, r.gateway))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_are_checked() {
        assert_eq!(
            parse_cidr("10.88.0.0/16").unwrap(),
            ("10.88.0.0".parse().unwrap(), 16)
        );
        assert!(parse_cidr("10.88.0.0").is_err());
        assert!(parse_cidr("10.88.0.0/33").is_err());
        assert!(parse_cidr("fd00::/64").is_ok());
        assert!(parse_cidr("bogus/8").is_err());
    }
}
