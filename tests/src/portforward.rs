//! A small client of CRI's streaming port-forward, as `kubectl port-forward` reaches it: the
//! URL from the PortForward RPC, opened as a WebSocket with the `v4.channel.k8s.io`
//! subprotocol (what containerd's streaming server, the kubelet's, speaks besides SPDY). Each
//! binary frame's first byte is a channel: 0 is the port's data, 1 its errors; each channel
//! first carries the port (u16, little endian).

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

/// Connects to `url` (`http://host:port/path`) for `port`, sends `request` on the data channel
/// and returns what comes back on it (and on the error channel) until the server ends the
/// stream, `want` is seen in the data, or `timeout` passes.
pub fn exchange(
    url: &str,
    port: u16,
    request: &[u8],
    want: &str,
    timeout: Duration,
) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not an http URL: {url}"))?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = TcpStream::connect(host).map_err(|e| format!("connect {host}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    write!(
        s,
        "GET {path}?port={port} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: bXl2bS1wb3J0LWZ3ZC10ZXN0\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\
         Origin: http://{host}\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    // The response head, byte by byte (frames may follow at once).
    let deadline = Instant::now() + timeout;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            Ok(_) => return Err(format!("closed: {}", String::from_utf8_lossy(&head))),
            Err(_) if Instant::now() < deadline => continue,
            Err(e) => return Err(format!("upgrade: {e}")),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if !head.starts_with("HTTP/1.1 101") {
        return Err(format!("no upgrade: {head}"));
    }
    // Our data: one masked binary frame on channel 0.
    let mut payload = vec![0u8];
    payload.extend_from_slice(request);
    let mask = [0x5a, 0xa5, 0x3c, 0xc3];
    let mut frame = vec![0x82];
    if payload.len() < 126 {
        frame.push(0x80 | payload.len() as u8);
    } else {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&frame).map_err(|e| e.to_string())?;

    let (mut data, mut errors) = (Vec::new(), Vec::new());
    let mut seen_port = [false, false];
    let mut buf = Vec::new();
    loop {
        // Whole frames in `buf`.
        while let Some((opcode, body, used)) = parse_frame(&buf) {
            buf.drain(..used);
            if opcode == 8 {
                return Ok(texts(&data, &errors));
            }
            let Some((&ch, rest)) = body.split_first() else {
                continue;
            };
            let ch = ch as usize;
            if ch < 2 && !seen_port[ch] {
                // The port, first on each channel.
                seen_port[ch] = true;
                if rest != port.to_le_bytes() {
                    return Err(format!("channel {ch} announced port {rest:?}"));
                }
                continue;
            }
            match ch {
                0 => data.extend_from_slice(rest),
                _ => errors.extend_from_slice(rest),
            }
        }
        if String::from_utf8_lossy(&data).contains(want) {
            return Ok(texts(&data, &errors));
        }
        let mut chunk = [0u8; 16384];
        match s.read(&mut chunk) {
            Ok(0) => return Ok(texts(&data, &errors)),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) if Instant::now() < deadline => {}
            Err(_) => return Ok(texts(&data, &errors)),
        }
    }
}

fn texts(data: &[u8], errors: &[u8]) -> (String, String) {
    (
        String::from_utf8_lossy(data).into_owned(),
        String::from_utf8_lossy(errors).into_owned(),
    )
}

/// (opcode, unmasked payload, bytes used) of the first whole frame in `buf`.
fn parse_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let mask = if masked {
        let m: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(m)
    } else {
        None
    };
    let body = buf.get(at..at + len)?;
    let body = match mask {
        Some(m) => body.iter().enumerate().map(|(i, b)| b ^ m[i % 4]).collect(),
        None => body.to_vec(),
    };
    Some((opcode, body, at + len))
}
