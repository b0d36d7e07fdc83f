//! What the shim knows about each container and process.

use std::{
    collections::HashMap,
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

use containerd_shim_protos::{api::Status, protobuf::well_known_types::timestamp::Timestamp};

use super::io::{IoCopy, StdioPaths};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exit {
    pub status: u32,
    pub at_ns: i64,
}

impl Exit {
    pub fn timestamp(&self) -> Timestamp {
        let mut t = Timestamp::new();
        t.seconds = self.at_ns.div_euclid(1_000_000_000);
        t.nanos = self.at_ns.rem_euclid(1_000_000_000) as i32;
        t
    }
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// One process: a container's init (exec_id "") or an exec.
pub struct Proc {
    pub exec_id: String,
    pub stdio: StdioPaths,
    /// OCI process JSON of an exec (None for init).
    pub spec: Option<Vec<u8>>,
    pub pid: Mutex<u32>,
    pub status: Mutex<Status>,
    exit: Mutex<Option<Exit>>,
    exited: Condvar,
    pub io: Mutex<Option<Arc<IoCopy>>>,
}

impl Proc {
    pub fn new(exec_id: &str, stdio: StdioPaths, spec: Option<Vec<u8>>) -> Self {
        Proc {
            exec_id: exec_id.to_string(),
            stdio,
            spec,
            pid: Mutex::new(0),
            status: Mutex::new(Status::CREATED),
            exit: Mutex::new(None),
            exited: Condvar::new(),
            io: Mutex::new(None),
        }
    }

    pub fn pid(&self) -> u32 {
        *self.pid.lock().unwrap()
    }

    pub fn status(&self) -> Status {
        *self.status.lock().unwrap()
    }

    pub fn set_status(&self, s: Status) {
        *self.status.lock().unwrap() = s;
    }

    pub fn exit(&self) -> Option<Exit> {
        *self.exit.lock().unwrap()
    }

    /// Records the exit (once); returns false if it was already recorded.
    pub fn set_exit(&self, exit: Exit) -> bool {
        let mut e = self.exit.lock().unwrap();
        if e.is_some() {
            return false;
        }
        *e = Some(exit);
        self.set_status(Status::STOPPED);
        self.exited.notify_all();
        true
    }

    pub fn wait(&self) -> Exit {
        let mut e = self.exit.lock().unwrap();
        loop {
            if let Some(x) = *e {
                return x;
            }
            e = self
                .exited
                .wait_timeout(e, Duration::from_secs(3600))
                .unwrap()
                .0;
        }
    }
}

pub struct Ctr {
    pub id: String,
    pub bundle: String,
    /// Its rootfs and volumes in the shared directory; taken (and so undone) at removal.
    pub mounts: Mutex<Vec<super::shared_tree::ContainerMounts>>,
    pub init: Arc<Proc>,
    pub execs: Mutex<HashMap<String, Arc<Proc>>>,
}

impl Ctr {
    pub fn process(&self, exec_id: &str) -> Option<Arc<Proc>> {
        if exec_id.is_empty() {
            Some(self.init.clone())
        } else {
            self.execs.lock().unwrap().get(exec_id).cloned()
        }
    }
}
