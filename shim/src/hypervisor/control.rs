//! The shim's end of a VMM's control channel: a socketpair whose other end the VMM inherits as
//! fd [`crate::jail::CONTROL_FD`] (no socket on a path, so nothing but the shim reaches it). Over
//! it: `myvm-vmm`'s line protocol (`vmm/src/control.rs`), or QEMU's QMP. Both only size the
//! balloon today.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    time::Duration,
};

use super::HypervisorError;

/// How long the VMM may take to answer a control request.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The balloon as the VMM reports it (MiB of guest RAM held back from the guest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BalloonState {
    /// What the host asked for.
    pub target_mib: u64,
    /// What the guest driver holds now.
    pub actual_mib: u64,
}

fn err(what: impl std::fmt::Display) -> HypervisorError {
    HypervisorError::Control(what.to_string())
}

fn reader(stream: UnixStream) -> Result<BufReader<UnixStream>, HypervisorError> {
    stream.set_read_timeout(Some(TIMEOUT)).map_err(err)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(err)?;
    Ok(BufReader::new(stream))
}

fn read_line(r: &mut BufReader<UnixStream>) -> Result<String, HypervisorError> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => Err(err("the VMM closed its control channel")),
        Ok(_) => Ok(line),
        Err(e) => Err(err(format!("reading the VMM's answer: {e}"))),
    }
}

/// `myvm-vmm`'s control channel.
pub struct LineControl {
    r: BufReader<UnixStream>,
}

impl LineControl {
    pub fn new(stream: UnixStream) -> Result<Self, HypervisorError> {
        Ok(LineControl { r: reader(stream)? })
    }

    fn request(&mut self, line: &str) -> Result<String, HypervisorError> {
        self.r
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| err(format!("sending {line:?} to the VMM: {e}")))?;
        let answer = read_line(&mut self.r)?;
        let answer = answer.trim();
        match answer.strip_prefix("ok") {
            Some(rest) => Ok(rest.trim().to_string()),
            None => Err(err(format!("myvm-vmm refused {line:?}: {answer}"))),
        }
    }

    pub fn set_balloon_mib(&mut self, mib: u64) -> Result<(), HypervisorError> {
        self.request(&format!("balloon set {mib}")).map(drop)
    }

    pub fn balloon(&mut self) -> Result<BalloonState, HypervisorError> {
        let answer = self.request("balloon get")?;
        let field = |name: &str| {
            answer
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| err(format!("myvm-vmm's balloon answer has no {name}: {answer}")))
        };
        Ok(BalloonState {
            target_mib: field("target")?,
            actual_mib: field("actual")?,
        })
    }
}

/// QEMU's QMP on the control channel (`-chardev socket,fd=…` + `-mon mode=control`). QMP's
/// balloon speaks of the memory the guest keeps, in bytes; we speak of what the balloon holds.
pub struct Qmp {
    r: BufReader<UnixStream>,
    memory_mib: u64,
    greeted: bool,
}

impl Qmp {
    pub fn new(stream: UnixStream, memory_mib: u64) -> Result<Self, HypervisorError> {
        Ok(Qmp {
            r: reader(stream)?,
            memory_mib,
            greeted: false,
        })
    }

    /// Sends one command and returns its `return` value (events on the way are skipped).
    fn execute(
        &mut self,
        command: &str,
        arguments: serde_json::Value,
    ) -> Result<serde_json::Value, HypervisorError> {
        if !self.greeted {
            let greeting = read_line(&mut self.r)?;
            if !greeting.contains("\"QMP\"") {
                return Err(err(format!("not a QMP greeting: {}", greeting.trim())));
            }
            self.greeted = true;
            self.execute("qmp_capabilities", serde_json::Value::Null)?;
        }
        let mut msg = serde_json::json!({ "execute": command });
        if !arguments.is_null() {
            msg["arguments"] = arguments;
        }
        self.r
            .get_mut()
            .write_all(format!("{msg}\n").as_bytes())
            .map_err(|e| err(format!("sending QMP {command}: {e}")))?;
        loop {
            let line = read_line(&mut self.r)?;
            let v: serde_json::Value = serde_json::from_str(&line)
                .map_err(|e| err(format!("QMP answer to {command} is not JSON ({e}): {line}")))?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(err(format!("QMP {command}: {}", e["desc"])));
            }
            // An event ({"event": …}): not ours.
        }
    }

    pub fn set_balloon_mib(&mut self, mib: u64) -> Result<(), HypervisorError> {
        let keep = self.memory_mib.saturating_sub(mib) << 20;
        self.execute("balloon", serde_json::json!({ "value": keep }))
            .map(drop)
    }

    pub fn balloon(&mut self, target_mib: u64) -> Result<BalloonState, HypervisorError> {
        let r = self.execute("query-balloon", serde_json::Value::Null)?;
        let actual = r["actual"]
            .as_u64()
            .ok_or_else(|| err(format!("query-balloon answered {r}")))?;
        Ok(BalloonState {
            target_mib,
            actual_mib: self.memory_mib.saturating_sub(actual >> 20),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A fake VMM on the other end: answers each request line with the next of `answers`.
    fn fake(answers: &'static [&'static str]) -> (UnixStream, std::thread::JoinHandle<String>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            let mut got = String::new();
            let mut r = BufReader::new(theirs.try_clone().unwrap());
            let mut w = theirs;
            for a in answers {
                if let Some(greeting) = a.strip_prefix("GREET ") {
                    writeln!(w, "{greeting}").unwrap();
                    continue;
                }
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                got.push_str(&line);
                writeln!(w, "{a}").unwrap();
            }
            let _ = r.read_to_string(&mut got);
            got
        });
        (ours, t)
    }

    #[test]
    fn line_protocol() {
        let (s, t) = fake(&["ok", "ok target=96 actual=90 released=12", "error no"]);
        let mut c = LineControl::new(s).unwrap();
        c.set_balloon_mib(96).unwrap();
        assert_eq!(
            c.balloon().unwrap(),
            BalloonState {
                target_mib: 96,
                actual_mib: 90
            }
        );
        let e = c.set_balloon_mib(1).unwrap_err().to_string();
        assert!(e.contains("refused \"balloon set 1\": error no"), "{e}");
        drop(c);
        assert_eq!(
            t.join().unwrap(),
            "balloon set 96\nballoon get\nballoon set 1\n"
        );
    }

    #[test]
    fn qmp_greeting_capabilities_events_and_errors() {
        let (s, t) = fake(&[
            r#"GREET {"QMP": {"version": {}, "capabilities": []}}"#,
            r#"{"return": {}}"#,
            r#"{"return": {}}"#,
            // An event before the answer.
            "{\"event\": \"BALLOON_CHANGE\", \"data\": {\"actual\": 1}}\n{\"return\": {\"actual\": 805306368}}",
            r#"{"error": {"class": "GenericError", "desc": "no balloon"}}"#,
        ]);
        let mut q = Qmp::new(s, 1024).unwrap();
        q.set_balloon_mib(256).unwrap();
        assert_eq!(
            q.balloon(256).unwrap(),
            BalloonState {
                target_mib: 256,
                actual_mib: 256
            }
        );
        let e = q.set_balloon_mib(1).unwrap_err().to_string();
        assert!(e.contains("no balloon"), "{e}");
        drop(q);
        let sent = t.join().unwrap();
        assert!(
            sent.starts_with(
                "{\"execute\":\"qmp_capabilities\"}\n{\"arguments\":{\"value\":805306368},\"execute\":\"balloon\"}\n"
            ),
            "{sent}"
        );
    }
}
