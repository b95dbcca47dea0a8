//! A corosync closed process group (libcpg) as a thread and a channel.
//!
//! The thread connects (`cpg_initialize` with model v1, `cpg_local_get`,
//! `cpg_context_set`, `cpg_fd_get`), joins the group and then polls and
//! dispatches; every callback becomes a [`CpgEvent`] in a
//! `std::sync::mpsc` channel (one consumer, the state machine; nothing here
//! needs crossbeam's select or multi-consumer queues). When corosync goes
//! away the thread reports [`CpgEvent::Disconnected`], finalizes, and
//! connects again every 5 s; each successful join is reported as
//! [`CpgEvent::Joined`].
//!
//! The group name is given without a NUL; it is joined with the NUL
//! appended, as the C daemon does (`length = strlen(name) + 1`), so that
//! C nodes and we are in the same group (rust-corosync passes the length
//! of the Rust string, without NUL).
//!
//! [`CpgSender::leave`] is the DFSM's LEAVE mode: `cpg_leave`, then, once
//! corosync has reported our own departure, a new connection and join when
//! the 5 s reconnect timer allows (dfsm.c `service_dfsm_dispatch` returns
//! FALSE once we are no member; loop.c initializes the service again, which
//! joins again). [`CpgSender::leave_for_good`] is the ERROR mode: leave and
//! never join again.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pmxcfs_api_types::NodeId;
use rust_corosync::cpg;
use rust_corosync::{CsError, DispatchFlags};

use crate::registry::{new_context, Registration, Registry};
use crate::retry::{retry_try_again, RetryError, TryAgainPolicy, RECONNECT_INTERVAL};
use crate::runner::{Client, Control, Next, ServiceThread};
use crate::{StopError, STOP_TIMEOUT};

/// Longest group name (without the NUL): `struct cpg_name` holds 128
/// bytes, and rust-corosync refuses names (here: with the NUL) longer than
/// 127.
pub const MAX_GROUP_NAME_LEN: usize = 126;

/// Messages dispatched one by one per poll at most, before the thread
/// looks at its stop flag and commands again (C dispatches one per poll).
const DISPATCH_BATCH: u32 = 64;

/// How long we wait for corosync to report our own leave before we close
/// the connection anyway.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A group member: node id and process id.
pub type CpgMember = (NodeId, u32);

/// Where the CPG thread hands its events (in the order corosync delivered
/// them); called on the service thread, also from corosync callbacks.
pub type EventSink = Arc<dyn Fn(CpgEvent) + Send + Sync>;

/// What the CPG thread reports, in the order corosync delivered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CpgEvent {
    /// We joined the group (after every connection): our node id and pid.
    Joined { nodeid: NodeId, pid: u32 },
    /// Membership change (`cpg_confchg_fn`).
    Confchg {
        members: Vec<CpgMember>,
        left: Vec<CpgMember>,
        joined: Vec<CpgMember>,
    },
    /// A message of the group, in agreed order.
    Deliver {
        nodeid: NodeId,
        pid: u32,
        msg: Vec<u8>,
    },
    /// The connection to corosync is lost; the thread connects and joins
    /// again (another `Joined`) when corosync is back.
    Disconnected,
}

/// Errors of the CPG service.
#[derive(Debug, thiserror::Error)]
pub enum CpgError {
    #[error("invalid CPG group name {0:?} (1 to 126 bytes, no NUL)")]
    InvalidGroupName(String),
    #[error("not joined to the CPG group")]
    NotJoined,
    #[error("CPG service is stopping")]
    Stopped,
    #[error("{op} failed: {err}")]
    Corosync { op: &'static str, err: CsError },
    #[error("{op}: corosync still answers TRY_AGAIN after {attempts} attempts")]
    TryAgainExhausted { op: &'static str, attempts: u32 },
    #[error("cannot start the CPG service thread: {0}")]
    Spawn(#[from] std::io::Error),
}

/// Settings of a [`CpgService`].
#[derive(Clone, Debug)]
pub struct CpgConfig {
    /// Group name, without NUL.
    pub group: String,
    /// Interval between connection attempts.
    pub reconnect_interval: Duration,
    /// Retries of `cpg_mcast_joined` answered TRY_AGAIN.
    pub mcast_policy: TryAgainPolicy,
}

impl CpgConfig {
    pub fn new(group: &str) -> Self {
        CpgConfig {
            group: group.to_string(),
            reconnect_interval: RECONNECT_INTERVAL,
            mcast_policy: TryAgainPolicy::MCAST,
        }
    }
}

/// The group name as joined: checked, with the NUL appended.
pub fn wire_group_name(group: &str) -> Result<String, CpgError> {
    if group.is_empty() || group.len() > MAX_GROUP_NAME_LEN || group.contains('\0') {
        return Err(CpgError::InvalidGroupName(group.to_string()));
    }
    Ok(format!("{group}\0"))
}

/// What a leave request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeaveMode {
    /// Join again when the reconnect timer allows.
    Rejoin,
    /// Stay out until the service is stopped.
    Stay,
}

/// State shared by the service, its senders and its thread.
struct Shared {
    ctl: Arc<Control>,
    /// A clone (which never finalizes) of the joined handle; `None` while
    /// not joined. Held locked during `cpg_mcast_joined`, so the thread
    /// cannot finalize the handle under a sender's feet.
    slot: Mutex<Option<cpg::Handle>>,
    leave: Mutex<Option<LeaveMode>>,
    mcast_policy: TryAgainPolicy,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends into the group and asks for leaves; cheap to clone, usable from
/// any thread.
#[derive(Clone)]
pub struct CpgSender {
    shared: Arc<Shared>,
}

enum McastFail {
    NotJoined,
    Cs(CsError),
}

impl CpgSender {
    /// `cpg_mcast_joined(CPG_TYPE_AGREED)`; TRY_AGAIN is retried every
    /// 100 ms, 100 attempts in all (dfsm.c). Fails at once when not joined
    /// and within 100 ms when the service is stopping.
    pub fn mcast_agreed(&self, msg: &[u8]) -> Result<(), CpgError> {
        let ctl = &self.shared.ctl;
        if ctl.stopping() {
            return Err(CpgError::Stopped);
        }
        let r = retry_try_again(
            self.shared.mcast_policy,
            std::thread::sleep,
            || ctl.stopping(),
            |e| matches!(e, McastFail::Cs(CsError::CsErrTryAgain)),
            || {
                let slot = lock(&self.shared.slot);
                let h = slot.as_ref().ok_or(McastFail::NotJoined)?;
                cpg::mcast_joined(h, cpg::Guarantee::TypeAgreed, msg).map_err(McastFail::Cs)
            },
        );
        match r {
            Ok(()) => Ok(()),
            Err(RetryError::Failed(McastFail::NotJoined)) => Err(CpgError::NotJoined),
            Err(RetryError::Failed(McastFail::Cs(err))) => Err(CpgError::Corosync {
                op: "cpg_mcast_joined",
                err,
            }),
            Err(RetryError::Exhausted(attempts)) => Err(CpgError::TryAgainExhausted {
                op: "cpg_mcast_joined",
                attempts,
            }),
            Err(RetryError::Cancelled) => Err(CpgError::Stopped),
        }
    }

    /// Leaves the group (`cpg_leave`, done by the service thread) and joins
    /// it again once corosync reported the leave and the reconnect timer
    /// allows: another [`CpgEvent::Joined`] follows. Sends fail with
    /// [`CpgError::NotJoined`] in between.
    pub fn leave(&self) {
        self.request_leave(LeaveMode::Rejoin);
    }

    /// Leaves the group and stays out until the service is stopped.
    pub fn leave_for_good(&self) {
        self.request_leave(LeaveMode::Stay);
    }

    fn request_leave(&self, mode: LeaveMode) {
        let mut l = lock(&self.shared.leave);
        // a leave for good is not weakened by a later plain leave
        if *l != Some(LeaveMode::Stay) {
            *l = Some(mode);
        }
        drop(l);
        self.shared.ctl.wake();
    }

    /// Whether we are joined (sends can be tried).
    pub fn is_joined(&self) -> bool {
        lock(&self.shared.slot).is_some()
    }
}

/// The CPG service: a thread joined to one group.
pub struct CpgService {
    sender: CpgSender,
    thread: ServiceThread,
}

impl CpgService {
    /// Starts the service for `group` (a name without NUL) with the
    /// defaults of the C daemon; events arrive on the returned receiver.
    pub fn start(group: &str) -> Result<(CpgService, mpsc::Receiver<CpgEvent>), CpgError> {
        Self::start_with(CpgConfig::new(group))
    }

    pub fn start_with(
        config: CpgConfig,
    ) -> Result<(CpgService, mpsc::Receiver<CpgEvent>), CpgError> {
        let (tx, rx) = mpsc::channel();
        let sink: EventSink = Arc::new(move |e| {
            let _ = tx.send(e);
        });
        Ok((Self::start_with_sink(config, sink)?, rx))
    }

    /// Like [`start_with`](Self::start_with), with every event handed to
    /// `sink` on the service thread (no channel in between: the daemon
    /// puts it straight into its group service's queue).
    pub fn start_with_sink(config: CpgConfig, sink: EventSink) -> Result<CpgService, CpgError> {
        Self::start_with_sink_and(config, sink, |_| {})
    }

    /// As [`start_with_sink`](Self::start_with_sink); `ready` gets this
    /// group's sender before the thread starts, so that whatever answers
    /// the first events (a sync start) can already multicast.
    pub fn start_with_sink_and(
        config: CpgConfig,
        sink: EventSink,
        ready: impl FnOnce(CpgSender),
    ) -> Result<CpgService, CpgError> {
        let group = wire_group_name(&config.group)?;
        let ctl = Arc::new(Control::new()?);
        let shared = Arc::new(Shared {
            ctl: ctl.clone(),
            slot: Mutex::new(None),
            leave: Mutex::new(None),
            mcast_policy: config.mcast_policy,
        });
        let client = CpgClient {
            group,
            events: sink,
            shared: shared.clone(),
            conn: None,
        };
        let sender = CpgSender { shared };
        ready(sender.clone());
        let thread = ServiceThread::spawn("cpg", client, ctl, config.reconnect_interval)?;
        Ok(CpgService { sender, thread })
    }

    /// A sender for this group.
    pub fn sender(&self) -> CpgSender {
        self.sender.clone()
    }

    /// Asks the thread to stop without waiting (then call [`stop`](Self::stop)).
    pub fn request_stop(&self) {
        self.thread.request_stop();
    }

    /// Stops the thread (finalize) and waits at most 1 s for it.
    pub fn stop(self) -> Result<(), StopError> {
        self.stop_within(STOP_TIMEOUT)
    }

    pub fn stop_within(mut self, timeout: Duration) -> Result<(), StopError> {
        self.thread.stop(timeout)
    }
}

// ---------------------------------------------------------------------------
// callbacks

/// What a callback of one connection reaches.
struct Target {
    events: EventSink,
    local: (u32, u32),
    /// Set by a membership change that does not list us.
    not_member: AtomicBool,
    /// Callbacks run so far (to see whether a dispatch found anything).
    callbacks: AtomicU64,
}

static REGISTRY: Registry<Target> = Registry::new();

fn target_of(handle: &cpg::Handle) -> Option<Arc<Target>> {
    cpg::context_get(handle)
        .ok()
        .and_then(|ctx| REGISTRY.get(ctx))
}

fn members(list: &[cpg::Address]) -> Vec<CpgMember> {
    list.iter()
        .map(|a| (NodeId(u32::from(a.nodeid)), a.pid))
        .collect()
}

fn deliver_cb(
    handle: &cpg::Handle,
    _group: String,
    nodeid: rust_corosync::NodeId,
    pid: u32,
    msg: &[u8],
    _msg_len: usize,
) {
    if let Some(t) = target_of(handle) {
        t.callbacks.fetch_add(1, Ordering::Relaxed);
        (t.events)(CpgEvent::Deliver {
            nodeid: NodeId(u32::from(nodeid)),
            pid,
            msg: msg.to_vec(),
        });
    }
}

fn confchg_cb(
    handle: &cpg::Handle,
    _group: &str,
    member_list: Vec<cpg::Address>,
    left_list: Vec<cpg::Address>,
    joined_list: Vec<cpg::Address>,
) {
    if let Some(t) = target_of(handle) {
        t.callbacks.fetch_add(1, Ordering::Relaxed);
        let members = members(&member_list);
        let me = (NodeId(t.local.0), t.local.1);
        if !members.contains(&me) {
            t.not_member.store(true, Ordering::Release);
        }
        (t.events)(CpgEvent::Confchg {
            members,
            left: self::members(&left_list),
            joined: self::members(&joined_list),
        });
    }
}

// ---------------------------------------------------------------------------
// the thread's side

enum ConnState {
    Joined,
    Leaving { mode: LeaveMode, since: Instant },
}

struct Conn {
    // field order is drop order: finalize before the registry entry goes
    handle: cpg::Handle,
    _registration: Registration<Target>,
    target: Arc<Target>,
    state: ConnState,
}

struct CpgClient {
    group: String,
    events: EventSink,
    shared: Arc<Shared>,
    conn: Option<Conn>,
}

fn cs(op: &'static str) -> impl FnOnce(CsError) -> CpgError {
    move |err| CpgError::Corosync { op, err }
}

/// Runs a join or leave, retrying TRY_AGAIN every 100 ms (C retries
/// without limit; we give up after 10 s and reconnect).
fn join_or_leave(
    ctl: &Control,
    op: &'static str,
    f: impl FnMut() -> Result<(), CsError>,
) -> Result<(), CpgError> {
    retry_try_again(
        TryAgainPolicy::JOIN_LEAVE,
        |d| {
            ctl.sleep(d);
        },
        || ctl.stopping(),
        |e| *e == CsError::CsErrTryAgain,
        f,
    )
    .map_err(|e| match e {
        RetryError::Failed(err) => CpgError::Corosync { op, err },
        RetryError::Exhausted(attempts) => CpgError::TryAgainExhausted { op, attempts },
        RetryError::Cancelled => CpgError::Stopped,
    })
}

impl Client for CpgClient {
    type Error = CpgError;

    fn name(&self) -> &'static str {
        "cpg"
    }

    fn connect(&mut self, ctl: &Control) -> Result<RawFd, CpgError> {
        let context = new_context();
        let model = cpg::ModelData::ModelV1(cpg::Model1Data {
            flags: cpg::Model1Flags::None,
            deliver_fn: Some(deliver_cb),
            confchg_fn: Some(confchg_cb),
            totem_confchg_fn: None,
        });
        // from here on, dropping `handle` finalizes it
        let handle = cpg::initialize(&model, context).map_err(cs("cpg_initialize"))?;
        let nodeid = u32::from(cpg::local_get(&handle).map_err(cs("cpg_local_get"))?);
        let pid = std::process::id();
        let target = Arc::new(Target {
            events: self.events.clone(),
            local: (nodeid, pid),
            not_member: AtomicBool::new(false),
            callbacks: AtomicU64::new(0),
        });
        let registration = Registration::with_context(&REGISTRY, context, target.clone());
        // the context given to initialize points to a temporary: set it
        cpg::context_set(&handle, context).map_err(cs("cpg_context_set"))?;
        let fd = cpg::fd_get(&handle).map_err(cs("cpg_fd_get"))?;
        join_or_leave(ctl, "cpg_join", || cpg::join(&handle, &self.group))?;
        *lock(&self.shared.slot) = Some(handle.clone());
        // a leave asked for before this join is void
        lock(&self.shared.leave).take_if(|m| *m == LeaveMode::Rejoin);
        tracing::info!(
            "cpg: joined group {:?} as {nodeid}/{pid}",
            self.group.trim_end_matches('\0')
        );
        (self.events)(CpgEvent::Joined {
            nodeid: NodeId(nodeid),
            pid,
        });
        self.conn = Some(Conn {
            handle,
            _registration: registration,
            target,
            state: ConnState::Joined,
        });
        Ok(fd)
    }

    fn dispatch(&mut self, ctl: &Control) -> Result<Next, CpgError> {
        let Some(conn) = &self.conn else {
            return Ok(Next::Reconnect);
        };
        // one message at a time without blocking (C: CS_DISPATCH_ONE per
        // poll), a bounded batch while messages keep coming: a flood of
        // messages cannot delay a stop or a leave for long
        for _ in 0..DISPATCH_BATCH {
            let before = conn.target.callbacks.load(Ordering::Relaxed);
            match cpg::dispatch(&conn.handle, DispatchFlags::OneNonblocking) {
                Ok(()) => {}
                // non-blocking: nothing (more) to dispatch now; poll again
                // (a pause here would delay every delivery)
                Err(CsError::CsErrTryAgain) => break,
                Err(err) => {
                    return Err(CpgError::Corosync {
                        op: "cpg_dispatch",
                        err,
                    })
                }
            }
            if conn.target.callbacks.load(Ordering::Relaxed) == before || ctl.stopping() {
                break;
            }
        }
        Ok(Next::Continue)
    }

    fn tick(&mut self, ctl: &Control) -> Result<Next, CpgError> {
        let Some(conn) = &mut self.conn else {
            return Ok(Next::Reconnect);
        };
        if let ConnState::Joined = conn.state {
            let Some(mode) = lock(&self.shared.leave).take() else {
                return Ok(Next::Continue);
            };
            // no sender can use the handle from here on
            lock(&self.shared.slot).take();
            conn.target.not_member.store(false, Ordering::Release);
            join_or_leave(ctl, "cpg_leave", || cpg::leave(&conn.handle, &self.group))?;
            tracing::info!("cpg: left group {:?}", self.group.trim_end_matches('\0'));
            conn.state = ConnState::Leaving {
                mode,
                since: Instant::now(),
            };
        }
        if let ConnState::Leaving { mode, since } = conn.state {
            let left = conn.target.not_member.load(Ordering::Acquire);
            if left || since.elapsed() >= LEAVE_TIMEOUT {
                if !left {
                    tracing::warn!("cpg: no confirmation of our leave; closing the connection");
                }
                return Ok(match mode {
                    LeaveMode::Rejoin => Next::Reconnect,
                    LeaveMode::Stay => Next::Park,
                });
            }
        }
        Ok(Next::Continue)
    }

    fn disconnect(&mut self, lost: bool) {
        lock(&self.shared.slot).take();
        if let Some(conn) = self.conn.take() {
            // finalize (the handle is not a clone), then the registry entry
            drop(conn);
            if lost {
                (self.events)(CpgEvent::Disconnected);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_name_gets_its_nul() {
        assert_eq!(wire_group_name("pve_dcdb_v1").unwrap(), "pve_dcdb_v1\0");
        assert_eq!(wire_group_name(&"x".repeat(126)).unwrap().len(), 127);
    }

    #[test]
    fn bad_group_names_are_refused() {
        for bad in ["", "a\0b", &"x".repeat(127)] {
            assert!(matches!(
                wire_group_name(bad),
                Err(CpgError::InvalidGroupName(_))
            ));
        }
    }
}
