//! The thread that runs one corosync service: connect, poll the service's
//! file descriptor, dispatch, and on failure finalize and connect again
//! when the reconnect timer allows (loop.c: initialize, dispatch on
//! POLLIN, finalize, re-initialize every 5 s).
//!
//! The thread never blocks without a bound: it polls the corosync
//! descriptor together with an eventfd that `stop()` (and commands such as
//! a CPG leave) write to, so a stop request is seen at once; the poll also
//! times out every second. Pauses inside the thread (TRY_AGAIN retries)
//! wait on the same eventfd.

use std::os::fd::{AsFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::retry::ReconnectTimer;
use crate::StopError;

/// Longest single poll of the service thread.
const POLL_TIMEOUT: Duration = Duration::from_secs(1);

/// What the thread does after a dispatch or a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Keep polling this connection.
    Continue,
    /// Close this connection (not a failure) and connect again when the
    /// reconnect timer allows.
    Reconnect,
    /// Close this connection and stay idle until stopped.
    Park,
}

/// One corosync service as seen by the thread.
pub(crate) trait Client: Send + 'static {
    type Error: std::fmt::Display;

    /// Log name of the service.
    fn name(&self) -> &'static str;

    /// Connects (initialize, set up, join or track); returns the descriptor
    /// to poll. On an error the client has released whatever it had made.
    fn connect(&mut self, ctl: &Control) -> Result<RawFd, Self::Error>;

    /// The descriptor is readable or hung up: dispatch. An error closes the
    /// connection as lost.
    fn dispatch(&mut self, ctl: &Control) -> Result<Next, Self::Error>;

    /// Called after every poll while connected (woken, timed out, or after
    /// a dispatch): pending commands and timeouts.
    fn tick(&mut self, _ctl: &Control) -> Result<Next, Self::Error> {
        Ok(Next::Continue)
    }

    /// Releases the connection (finalize). `lost`: because it failed.
    fn disconnect(&mut self, lost: bool);
}

/// Stop flag and wake-up descriptor shared by a service thread and its
/// handles.
pub(crate) struct Control {
    stop: AtomicBool,
    wake: EventFd,
}

impl Control {
    pub(crate) fn new() -> std::io::Result<Self> {
        let wake = EventFd::from_flags(EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC)?;
        Ok(Control {
            stop: AtomicBool::new(false),
            wake,
        })
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Wakes the service thread (a command is pending).
    pub(crate) fn wake(&self) {
        // EAGAIN only when the counter is near u64::MAX: it is readable then
        let _ = self.wake.write(1);
    }

    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake();
    }

    /// Polls the wake-up descriptor and `fd` (if any) for at most
    /// `timeout`; drains the wake-up descriptor. Returns whether `fd` is
    /// readable or hung up. Only the service thread calls this.
    fn poll(&self, fd: Option<RawFd>, timeout: Duration) -> Result<bool, Errno> {
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        let (woken, ready) = {
            let mut fds = Vec::with_capacity(2);
            fds.push(PollFd::new(self.wake.as_fd(), PollFlags::POLLIN));
            if let Some(fd) = fd {
                // SAFETY: `fd` is the descriptor of a corosync connection
                // that this thread owns; it is closed only by finalize,
                // which this same thread calls after this poll returned.
                let bfd = unsafe { BorrowedFd::borrow_raw(fd) };
                fds.push(PollFd::new(bfd, PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => return Ok(false),
                Err(e) => return Err(e),
            }
            let woken = fds[0].revents().is_some_and(|r| !r.is_empty());
            let ready = fds.get(1).and_then(|p| p.revents()).is_some_and(|r| {
                r.intersects(
                    PollFlags::POLLIN
                        | PollFlags::POLLHUP
                        | PollFlags::POLLERR
                        | PollFlags::POLLNVAL,
                )
            });
            (woken, ready)
        };
        if woken {
            let _ = self.wake.read();
        }
        Ok(ready)
    }

    /// Pauses the service thread for `d`, or less when a stop is requested.
    /// Returns false when stopping.
    pub(crate) fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        loop {
            if self.stopping() {
                return false;
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            if self.poll(None, left).is_err() {
                std::thread::sleep(left.min(Duration::from_millis(10)));
            }
        }
    }
}

/// A running service thread.
pub(crate) struct ServiceThread {
    ctl: Arc<Control>,
    join: Option<JoinHandle<()>>,
    done: mpsc::Receiver<()>,
}

impl ServiceThread {
    pub(crate) fn spawn<C: Client>(
        thread_name: &str,
        client: C,
        ctl: Arc<Control>,
        reconnect_interval: Duration,
    ) -> std::io::Result<Self> {
        let (done_tx, done) = mpsc::channel::<()>();
        let thread_ctl = ctl.clone();
        let join = std::thread::Builder::new()
            .name(thread_name.to_string())
            .spawn(move || {
                // dropped when the thread ends, however it ends: stop() sees
                // the channel close
                let _done = done_tx;
                run(client, &thread_ctl, ReconnectTimer::new(reconnect_interval));
            })?;
        Ok(ServiceThread {
            ctl,
            join: Some(join),
            done,
        })
    }

    pub(crate) fn request_stop(&self) {
        self.ctl.request_stop();
    }

    /// Asks the thread to stop and waits at most `timeout` for it to end.
    /// On a timeout the thread is left to end on its own (detached).
    pub(crate) fn stop(&mut self, timeout: Duration) -> Result<(), StopError> {
        self.ctl.request_stop();
        let Some(join) = self.join.take() else {
            return Ok(());
        };
        match self.done.recv_timeout(timeout) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                join.join().map_err(|_| StopError::Panicked)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Err(StopError::Timeout(timeout)),
        }
    }
}

impl Drop for ServiceThread {
    fn drop(&mut self) {
        if self.join.is_some() {
            let _ = self.stop(crate::STOP_TIMEOUT);
        }
    }
}

fn run<C: Client>(mut client: C, ctl: &Control, mut timer: ReconnectTimer) {
    let name = client.name();
    let mut fd: Option<RawFd> = None;
    let mut parked = false;
    // consecutive failed connection attempts (logged loudly only once, as
    // loop.c's errcount)
    let mut failures: u32 = 0;
    loop {
        if ctl.stopping() {
            if fd.is_some() {
                client.disconnect(false);
            }
            tracing::debug!("{name}: service thread stopped");
            return;
        }
        let Some(cfd) = fd else {
            let now = Instant::now();
            if !parked && timer.due(now) {
                timer.attempted(now);
                match client.connect(ctl) {
                    Ok(f) => {
                        if failures > 0 {
                            tracing::info!("{name}: connected after {failures} failed attempts");
                        } else {
                            tracing::debug!("{name}: connected");
                        }
                        failures = 0;
                        fd = Some(f);
                        continue;
                    }
                    Err(e) => {
                        if ctl.stopping() {
                            tracing::debug!("{name}: connection attempt ended by stop: {e}");
                        } else if failures == 0 {
                            tracing::error!("{name}: can't initialize service: {e}");
                        } else {
                            tracing::debug!("{name}: can't initialize service: {e}");
                        }
                        failures = failures.saturating_add(1);
                    }
                }
            }
            let wait = if parked {
                POLL_TIMEOUT
            } else {
                timer.wait_time(Instant::now()).min(POLL_TIMEOUT)
            };
            if ctl.poll(None, wait).is_err() {
                std::thread::sleep(Duration::from_millis(10));
            }
            continue;
        };
        let next = match ctl.poll(Some(cfd), POLL_TIMEOUT) {
            Ok(true) => match client.dispatch(ctl) {
                Ok(Next::Continue) => client.tick(ctl),
                other => other,
            },
            Ok(false) => client.tick(ctl),
            Err(e) => {
                tracing::warn!("{name}: poll failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                Ok(Next::Continue)
            }
        };
        match next {
            Ok(Next::Continue) => {}
            Ok(Next::Reconnect) => {
                client.disconnect(false);
                fd = None;
            }
            Ok(Next::Park) => {
                client.disconnect(false);
                fd = None;
                parked = true;
            }
            Err(e) => {
                tracing::error!("{name}: connection lost: {e}");
                client.disconnect(true);
                fd = None;
            }
        }
    }
}
