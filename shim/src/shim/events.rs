//! The sandbox's events: the long poll of the agent's exits and OOM kills, turned into task
//! events; and the VM's death, turned into one SandboxError and the exits of what it took down.

use std::{sync::Arc, time::Duration};

use containerd_shim::protos::{events::task::*, protobuf::MessageField, topics::*};
use myvm_protocol::agent as ag;

use super::{
    sandbox::Sandbox,
    state::{now_ns, Ctr, Exit, Proc},
    Inner,
};
use crate::timing;

impl Inner {
    pub(super) fn event_loop(self: &Arc<Self>, sb: &Sandbox) {
        // A guest whose agent stops answering (hung, or hostile) while its VMM runs is stopped
        // after this many failed long polls (about 13 s each): its tasks then end as killed.
        const MAX_FAILED_POLLS: u32 = 2;
        let mut failed = 0;
        let mut ack = 0;
        loop {
            let e = match sb.next_events(&mut ack) {
                Ok(events) => {
                    failed = 0;
                    for e in events {
                        self.on_event(e);
                    }
                    continue;
                }
                Err(e) => e,
            };
            if self.sandbox.lock().unwrap().is_none() {
                return; // we stopped it
            }
            let running = sb.vm_running();
            if running {
                failed += 1;
                tracing::warn!(sandbox = sb.id, failed, "agent events: {e}");
                if failed < MAX_FAILED_POLLS {
                    std::thread::sleep(Duration::from_millis(200));
                    continue;
                }
            }
            // Why the VM is done for, named before anything is stopped (stopping removes the
            // serial console log it is read from).
            let reason = sb.death_reason();
            if running {
                tracing::error!(
                    sandbox = sb.id,
                    "{reason}: {failed} event polls failed, stopping the VM"
                );
                sb.stop();
            }
            // The VM is gone: every process still running is reported dead, with the reason,
            // after one SandboxError event that names the VM and why it ended.
            tracing::error!(
                sandbox = sb.id,
                reason = reason.kind,
                "the sandbox VM {} ended: {reason} ({e})",
                sb.id
            );
            let ctrs: Vec<_> = self.containers.lock().unwrap().values().cloned().collect();
            let mut dead = Vec::new();
            for c in &ctrs {
                let mut procs = vec![c.init.clone()];
                procs.extend(c.execs.lock().unwrap().values().cloned());
                procs.retain(|p| p.exit().is_none());
                if !procs.is_empty() {
                    dead.push((c.clone(), procs));
                }
            }
            self.publish(
                myvm_protocol::SANDBOX_ERROR_TOPIC,
                Box::new(myvm_protocol::events::SandboxError {
                    sandbox_id: sb.id.clone(),
                    vm: super::sandbox::vm_dir_name(&sb.id),
                    reason: reason.kind.to_string(),
                    message: reason.message.clone(),
                    container_ids: dead.iter().map(|(c, _)| c.id.clone()).collect(),
                    at_unix_nanos: now_ns(),
                    ..Default::default()
                }),
            );
            for (c, procs) in dead {
                for p in procs {
                    tracing::error!(
                        container = c.id,
                        "sandbox VM {} ended ({reason}): process reported killed",
                        sb.id
                    );
                    self.report_exit(
                        c.clone(),
                        p,
                        Exit {
                            status: 137,
                            at_ns: now_ns(),
                        },
                    );
                }
            }
            return;
        }
    }

    fn on_event(self: &Arc<Self>, e: ag::Event) {
        let Ok(c) = self.ctr(&e.container_id) else {
            return;
        };
        if e.has_oom() {
            self.publish(
                TASK_OOM_EVENT_TOPIC,
                Box::new(TaskOOM {
                    container_id: c.id.clone(),
                    ..Default::default()
                }),
            );
        } else if e.has_exited() {
            let x = e.exited();
            if let Some(p) = c.process(&e.exec_id) {
                self.report_exit(
                    c.clone(),
                    p,
                    Exit {
                        status: x.exit_status as u32,
                        at_ns: x.exited_at_ns,
                    },
                );
            }
        }
    }

    /// Reports an exit on a thread of its own: waiting for one process's output to drain must
    /// not hold up the event loop, nor another process's exit.
    fn report_exit(self: &Arc<Self>, c: Arc<Ctr>, p: Arc<Proc>, exit: Exit) {
        let me = self.clone();
        let (c2, p2) = (c.clone(), p.clone());
        let spawned = std::thread::Builder::new()
            .name("exit".into())
            .spawn(move || me.exited(&c2, &p2, exit));
        if spawned.is_err() {
            self.exited(&c, &p, exit);
        }
    }

    /// All output delivered, then the exit is recorded and published.
    pub(super) fn exited(&self, c: &Ctr, p: &Proc, exit: Exit) {
        if let Some(io) = p.io.lock().unwrap().clone() {
            io.wait_outputs(Duration::from_secs(10));
        }
        if p.set_exit(exit) {
            self.publish(
                TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    container_id: c.id.clone(),
                    id: if p.exec_id.is_empty() {
                        c.id.clone()
                    } else {
                        p.exec_id.clone()
                    },
                    pid: p.pid(),
                    exit_status: exit.status,
                    exited_at: MessageField::some(exit.timestamp()),
                    ..Default::default()
                }),
            );
            if p.exec_id.is_empty() {
                timing::mark_now(&c.id, "exit_reported");
            }
        }
    }
}
