//! The host side of the hybrid-vsock handshake (`myvm::hybrid_vsock`) and of the agent's stdio
//! stream header (`myvm::agent_client::open_stdio`) against a peer that answers arbitrary bytes.
//! The peer is the VMM's / vhost-device-vsock's socket, i.e. whatever the guest made it say.
//!
//! Input: one mode byte, then
//! - 0: a line for `parse_ack`, checked against a reference parser;
//! - 1: a port (le32), a timeout byte (0: a zero timeout, else 10 s) and the peer's reply, for
//!   `handshake` over a socketpair: the result and the bytes the returned stream still yields are
//!   checked against the reply;
//! - 2: the peer's reply for `open_stdio` through a listening Unix socket (the hybrid handshake
//!   then the `STDIO` header's `OK`/`ERR` line), checked likewise.
//!
//! The peer closes its side after the reply, so every run ends without waiting on a timeout.

#![no_main]

use std::{
    io::{Read, Write},
    net::Shutdown,
    os::unix::net::{UnixListener, UnixStream},
    path::PathBuf,
    sync::{mpsc, Mutex, OnceLock},
    time::Duration,
};

use libfuzzer_sys::fuzz_target;
use myvm::{
    agent_client::{open_stdio, AgentError, StdioStream},
    hybrid_vsock::{handshake, parse_ack, HybridVsockError},
};
use myvm_protocol::STDIO_VSOCK_PORT;

/// The longest acknowledgement line `handshake` reads (`MAX_ACK_LEN` in hybrid_vsock.rs).
const MAX_ACK_LEN: usize = 32;
/// The longest header reply line `open_stdio` reads.
const MAX_STDIO_LINE: usize = 1024;
/// Replies are cut to this, so that they fit in the socket buffer and the peer never blocks.
const MAX_REPLY: usize = 16 << 10;
const TIMEOUT: Duration = Duration::from_secs(10);

/// Reference: `OK <decimal u32>`, nothing else.
fn reference_ack(line: &[u8]) -> Option<u32> {
    let digits = line.strip_prefix(b"OK ")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u32, |v, d| {
        v.checked_mul(10)?.checked_add(u32::from(d - b'0'))
    })
}

/// What the host should make of a reply: `Ok(rest)` (the bytes after the line), or the error.
enum Expect<'a> {
    Ok(&'a [u8]),
    Refused,
    BadReply(String),
}

fn expect_handshake(reply: &[u8]) -> Expect<'_> {
    match reply.iter().position(|&b| b == b'\n') {
        _ if reply.is_empty() => Expect::Refused,
        Some(i) if i <= MAX_ACK_LEN => {
            let line = &reply[..i];
            if reference_ack(line).is_some() {
                Expect::Ok(&reply[i + 1..])
            } else {
                Expect::BadReply(String::from_utf8_lossy(line).into_owned())
            }
        }
        // Too long: cut after one byte more than allowed. No newline: the peer closed mid-line.
        _ => Expect::BadReply(
            String::from_utf8_lossy(&reply[..reply.len().min(MAX_ACK_LEN + 1)]).into_owned(),
        ),
    }
}

fn check_handshake_result(
    reply: &[u8],
    port: u32,
    got: Result<UnixStream, HybridVsockError>,
) -> Option<(UnixStream, &[u8])> {
    match (expect_handshake(reply), got) {
        (Expect::Ok(rest), Ok(s)) => Some((s, rest)),
        (Expect::Refused, Err(HybridVsockError::Refused { port: p })) => {
            assert_eq!(p, port);
            None
        }
        (Expect::BadReply(want), Err(HybridVsockError::BadReply { port: p, reply })) => {
            assert_eq!(p, port);
            assert_eq!(reply, want);
            None
        }
        (_, got) => panic!("reply {reply:?}: unexpected result {:?}", got.map(|_| ())),
    }
}

fn read_all(mut s: UnixStream) -> Vec<u8> {
    let mut v = Vec::new();
    s.read_to_end(&mut v)
        .expect("reading what follows the handshake");
    v
}

fn fuzz_handshake(data: &[u8]) {
    let Some((port, [timeout, reply @ ..])) = data.split_first_chunk::<4>() else {
        return;
    };
    let port = u32::from_le_bytes(*port);
    let reply = &reply[..reply.len().min(MAX_REPLY)];
    let (host, mut peer) = UnixStream::pair().unwrap();
    peer.write_all(reply).unwrap();
    peer.shutdown(Shutdown::Write).unwrap();
    // A caller whose deadline has just passed asks for a zero timeout: that is a timeout.
    if *timeout == 0 {
        let got = handshake(host, port, Duration::ZERO);
        assert!(
            matches!(got, Err(HybridVsockError::Timeout { port: p, .. }) if p == port),
            "zero timeout: {:?}",
            got.map(|_| ())
        );
        return;
    }
    let got = handshake(host, port, TIMEOUT);
    peer.set_nonblocking(true).unwrap();
    let mut sent = Vec::new();
    let _ = peer.read_to_end(&mut sent);
    assert_eq!(sent, format!("CONNECT {port}\n").as_bytes());
    if let Some((stream, rest)) = check_handshake_result(reply, port, got) {
        // Nothing of the guest's stream is lost to the handshake.
        assert_eq!(read_all(stream), rest);
    }
}

/// A listening "hybrid vsock" socket whose connections get the reply sent on `replies`; what the
/// host wrote comes back on `written` once the host closes.
struct Peer {
    path: PathBuf,
    replies: Mutex<mpsc::Sender<Vec<u8>>>,
    written: Mutex<mpsc::Receiver<Vec<u8>>>,
}

fn peer() -> &'static Peer {
    static PEER: OnceLock<Peer> = OnceLock::new();
    PEER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("myvm-fuzz-hv-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("vsock.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (reply_tx, reply_rx) = mpsc::channel::<Vec<u8>>();
        let (written_tx, written_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for reply in reply_rx {
                let (mut s, _) = listener.accept().unwrap();
                s.write_all(&reply).unwrap();
                s.shutdown(Shutdown::Write).unwrap();
                let mut written = Vec::new();
                let _ = s.read_to_end(&mut written);
                written_tx.send(written).unwrap();
            }
        });
        Peer {
            path,
            replies: Mutex::new(reply_tx),
            written: Mutex::new(written_rx),
        }
    })
}

fn fuzz_open_stdio(reply: &[u8]) {
    let reply = &reply[..reply.len().min(MAX_REPLY)];
    let peer = peer();
    peer.replies.lock().unwrap().send(reply.to_vec()).unwrap();
    let got = open_stdio(&peer.path, "c1", "", StdioStream::Stdout, TIMEOUT);

    let mut want_written = format!("CONNECT {STDIO_VSOCK_PORT}\n").into_bytes();
    match expect_handshake(reply) {
        Expect::Ok(after_ack) => {
            want_written.extend_from_slice(b"STDIO c1 - stdout\n");
            let nl = after_ack.iter().position(|&b| b == b'\n');
            match (nl, got) {
                (Some(i), Ok(conn)) if i < MAX_STDIO_LINE && &after_ack[..i] == b"OK" => {
                    assert_eq!(read_all(conn), &after_ack[i + 1..]);
                }
                (Some(i), Err(AgentError::Stdio { reason, .. }))
                    if i < MAX_STDIO_LINE && &after_ack[..i] != b"OK" =>
                {
                    let line = String::from_utf8_lossy(&after_ack[..i]);
                    assert_eq!(reason, line.strip_prefix("ERR ").unwrap_or(&line));
                }
                // No line within the limit: the agent closed, or sent too much.
                (_, Err(AgentError::Stdio { .. })) => {
                    assert!(nl.is_none_or(|i| i >= MAX_STDIO_LINE))
                }
                (_, got) => panic!("reply {reply:?}: unexpected {:?}", got.map(|_| ())),
            }
        }
        Expect::Refused => assert!(
            matches!(
                got,
                Err(AgentError::Vsock(HybridVsockError::Refused { .. }))
            ),
            "{:?}",
            got.map(|_| ())
        ),
        Expect::BadReply(want) => match got {
            Err(AgentError::Vsock(HybridVsockError::BadReply { reply, .. })) => {
                assert_eq!(reply, want)
            }
            got => panic!("unexpected {:?}", got.map(|_| ())),
        },
    }
    let written = peer.written.lock().unwrap().recv().unwrap();
    assert_eq!(written, want_written);
}

fuzz_target!(
    init: {
        // libFuzzer's main does not ignore SIGPIPE as a Rust main does.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    },
    |data: &[u8]| {
        let Some((&mode, rest)) = data.split_first() else {
            return;
        };
        match mode % 3 {
            0 => {
                let got = parse_ack(rest);
                assert_eq!(got, reference_ack(rest), "parse_ack({rest:?})");
                if let Some(p) = got {
                    assert_eq!(parse_ack(format!("OK {p}").as_bytes()), Some(p));
                }
            }
            1 => fuzz_handshake(rest),
            _ => fuzz_open_stdio(rest),
        }
    }
);
