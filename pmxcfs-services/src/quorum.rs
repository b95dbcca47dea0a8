//! The quorate flag (libquorum), published through a `tokio::sync::watch`
//! (readable without async by `borrow()`, awaitable by the daemon's tasks;
//! only tokio's `sync` feature).
//!
//! As quorum.c: `quorum_initialize` (the quorum type must be "set", i.e. a
//! quorum provider is configured), context, `quorum_trackstart` with
//! `CS_TRACK_CHANGES`, poll the descriptor and dispatch; the notification
//! callback sets the flag. We also read `quorum_getquorate` once after
//! connecting. The flag is false while not connected (C's
//! `cfs_set_quorate(0)` on every failure and at finalize).

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use rust_corosync::quorum;
use rust_corosync::{CsError, DispatchFlags, TrackFlags};
use tokio::sync::watch;

use crate::registry::{new_context, Registration, Registry};
use crate::retry::{RECONNECT_INTERVAL, TRY_AGAIN_INTERVAL};
use crate::runner::{Client, Control, Next, ServiceThread};
use crate::{StopError, STOP_TIMEOUT};

/// Errors of the quorum service.
#[derive(Debug, thiserror::Error)]
pub enum QuorumError {
    #[error("{op} failed: {err}")]
    Corosync { op: &'static str, err: CsError },
    #[error("corosync has no quorum provider (quorum type is not QUORUM_SET)")]
    NoQuorumProvider,
    #[error("cannot start the quorum service thread: {0}")]
    Spawn(#[from] std::io::Error),
}

fn cs(op: &'static str) -> impl FnOnce(CsError) -> QuorumError {
    move |err| QuorumError::Corosync { op, err }
}

/// The quorum service: a thread tracking the quorate flag.
pub struct QuorumService {
    quorate: watch::Receiver<bool>,
    thread: ServiceThread,
}

impl QuorumService {
    /// Starts tracking; not quorate until corosync says otherwise.
    pub fn start() -> Result<QuorumService, QuorumError> {
        Self::start_with(RECONNECT_INTERVAL)
    }

    pub fn start_with(reconnect_interval: Duration) -> Result<QuorumService, QuorumError> {
        let (tx, rx) = watch::channel(false);
        let ctl = Arc::new(Control::new()?);
        let client = QuorumClient {
            quorate: Arc::new(tx),
            conn: None,
        };
        let thread = ServiceThread::spawn("quorum", client, ctl, reconnect_interval)?;
        Ok(QuorumService {
            quorate: rx,
            thread,
        })
    }

    /// Whether the cluster is quorate now.
    pub fn is_quorate(&self) -> bool {
        *self.quorate.borrow()
    }

    /// A receiver of the flag (marked changed on every change).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.quorate.clone()
    }

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

fn set(tx: &watch::Sender<bool>, quorate: bool) {
    tx.send_if_modified(|q| {
        let changed = *q != quorate;
        *q = quorate;
        changed
    });
}

static REGISTRY: Registry<watch::Sender<bool>> = Registry::new();

fn notification_cb(
    handle: &quorum::Handle,
    quorate: bool,
    _ring_id: quorum::RingId,
    _members: Vec<rust_corosync::NodeId>,
) {
    if let Some(tx) = quorum::context_get(handle)
        .ok()
        .and_then(|ctx| REGISTRY.get(ctx))
    {
        tracing::debug!("quorum: notification, quorate = {quorate}");
        set(&tx, quorate);
    }
}

struct Conn {
    // finalize before the registry entry goes
    handle: quorum::Handle,
    _registration: Registration<watch::Sender<bool>>,
}

struct QuorumClient {
    quorate: Arc<watch::Sender<bool>>,
    conn: Option<Conn>,
}

impl Client for QuorumClient {
    type Error = QuorumError;

    fn name(&self) -> &'static str {
        "quorum"
    }

    fn connect(&mut self, _ctl: &Control) -> Result<RawFd, QuorumError> {
        let context = new_context();
        let model = quorum::ModelData::ModelV1(quorum::Model1Data {
            flags: quorum::Model1Flags::None,
            quorum_notification_fn: Some(notification_cb),
            nodelist_notification_fn: None,
        });
        let (handle, qtype) =
            quorum::initialize(&model, context).map_err(cs("quorum_initialize"))?;
        if !matches!(qtype, quorum::QuorumType::Set) {
            return Err(QuorumError::NoQuorumProvider);
        }
        let registration = Registration::with_context(&REGISTRY, context, self.quorate.clone());
        quorum::context_set(&handle, context).map_err(cs("quorum_context_set"))?;
        quorum::trackstart(&handle, TrackFlags::Changes).map_err(cs("quorum_trackstart"))?;
        let fd = quorum::fd_get(&handle).map_err(cs("quorum_fd_get"))?;
        let q = quorum::getquorate(&handle).map_err(cs("quorum_getquorate"))?;
        tracing::info!("quorum: connected, quorate = {q}");
        set(&self.quorate, q);
        self.conn = Some(Conn {
            handle,
            _registration: registration,
        });
        Ok(fd)
    }

    fn dispatch(&mut self, ctl: &Control) -> Result<Next, QuorumError> {
        let Some(conn) = &self.conn else {
            return Ok(Next::Reconnect);
        };
        match quorum::dispatch(&conn.handle, DispatchFlags::All) {
            Ok(()) => Ok(Next::Continue),
            Err(CsError::CsErrTryAgain) => {
                ctl.sleep(TRY_AGAIN_INTERVAL);
                Ok(Next::Continue)
            }
            Err(err) => Err(QuorumError::Corosync {
                op: "quorum_dispatch",
                err,
            }),
        }
    }

    fn disconnect(&mut self, _lost: bool) {
        set(&self.quorate, false);
        self.conn.take();
    }
}
