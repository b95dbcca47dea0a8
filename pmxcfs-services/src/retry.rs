//! Retry policies of the corosync services, as pure functions of the time
//! (so that tests can drive them with a fake clock).
//!
//! Two policies come from the C daemon:
//! - a service whose connection failed, or that could not connect, is
//!   initialized again at most every 5 s (loop.c: `service_start_job` runs
//!   every second and re-initializes a service when its last initialization
//!   is more than 5 s old);
//! - a CPG call answered `CS_ERR_TRY_AGAIN` is retried every 100 ms,
//!   `cpg_mcast_joined` at most 100 times in all (dfsm.c:
//!   `dfsm_send_message_full`).

use std::time::{Duration, Instant};

/// Interval between two connection attempts of a service (loop.c).
pub const RECONNECT_INTERVAL: Duration = Duration::from_secs(5);
/// Pause before a call answered `CS_ERR_TRY_AGAIN` is made again (dfsm.c).
pub const TRY_AGAIN_INTERVAL: Duration = Duration::from_millis(100);
/// Attempts of `cpg_mcast_joined` in all while corosync answers
/// `CS_ERR_TRY_AGAIN` (dfsm.c: retried while `retries < 100`).
pub const MCAST_MAX_ATTEMPTS: u32 = 100;

/// When the next connection attempt of a service is due: attempts are at
/// least `interval` apart, measured from the start of the previous attempt
/// (so a connection that breaks long after it was made is retried at once,
/// and one that keeps failing every `interval`).
#[derive(Clone, Debug)]
pub struct ReconnectTimer {
    interval: Duration,
    last_attempt: Option<Instant>,
}

impl ReconnectTimer {
    pub fn new(interval: Duration) -> Self {
        ReconnectTimer {
            interval,
            last_attempt: None,
        }
    }

    /// The interval this timer keeps between attempts.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Whether an attempt may start at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.wait_time(now).is_zero()
    }

    /// How long to wait from `now` until the next attempt is due (zero when
    /// it is due already).
    pub fn wait_time(&self, now: Instant) -> Duration {
        match self.last_attempt {
            None => Duration::ZERO,
            Some(last) => (last + self.interval).saturating_duration_since(now),
        }
    }

    /// Records that an attempt started at `now`.
    pub fn attempted(&mut self, now: Instant) {
        self.last_attempt = Some(now);
    }
}

/// How a call answered `CS_ERR_TRY_AGAIN` is repeated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TryAgainPolicy {
    /// Pause between two attempts.
    pub interval: Duration,
    /// Attempts in all (the first included); `None`: no limit.
    pub max_attempts: Option<u32>,
}

impl TryAgainPolicy {
    /// `cpg_mcast_joined`: every 100 ms, 100 attempts in all.
    pub const MCAST: TryAgainPolicy = TryAgainPolicy {
        interval: TRY_AGAIN_INTERVAL,
        max_attempts: Some(MCAST_MAX_ATTEMPTS),
    };
    /// `cpg_join` and `cpg_leave`: C retries them without limit; we stop
    /// after 10 s and treat the connection as failed (it is made again by
    /// the reconnect timer).
    pub const JOIN_LEAVE: TryAgainPolicy = TryAgainPolicy {
        interval: TRY_AGAIN_INTERVAL,
        max_attempts: Some(100),
    };
}

/// Why [`retry_try_again`] gave up.
#[derive(Debug, PartialEq, Eq)]
pub enum RetryError<E> {
    /// The operation failed with an error other than "try again".
    Failed(E),
    /// Still "try again" after this many attempts.
    Exhausted(u32),
    /// `cancelled` said so before an attempt.
    Cancelled,
}

/// Runs `op` until it returns anything but an error for which `is_try_again`
/// holds, pausing `policy.interval` (through `sleep`) between attempts, at
/// most `policy.max_attempts` attempts, and stopping early when `cancelled`
/// returns true (checked before every attempt but the first).
pub fn retry_try_again<T, E>(
    policy: TryAgainPolicy,
    mut sleep: impl FnMut(Duration),
    mut cancelled: impl FnMut() -> bool,
    is_try_again: impl Fn(&E) -> bool,
    mut op: impl FnMut() -> Result<T, E>,
) -> Result<T, RetryError<E>> {
    let mut attempts: u32 = 0;
    loop {
        if attempts > 0 && cancelled() {
            return Err(RetryError::Cancelled);
        }
        attempts = attempts.saturating_add(1);
        match op() {
            Ok(v) => return Ok(v),
            Err(e) if is_try_again(&e) => {
                if policy.max_attempts.is_some_and(|max| attempts >= max) {
                    return Err(RetryError::Exhausted(attempts));
                }
                sleep(policy.interval);
            }
            Err(e) => return Err(RetryError::Failed(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A clock that only moves when told to.
    struct FakeClock {
        start: Instant,
        offset: Cell<Duration>,
    }

    impl FakeClock {
        fn new() -> Self {
            FakeClock {
                start: Instant::now(),
                offset: Cell::new(Duration::ZERO),
            }
        }
        fn now(&self) -> Instant {
            self.start + self.offset.get()
        }
        fn advance(&self, d: Duration) {
            self.offset.set(self.offset.get() + d);
        }
    }

    #[test]
    fn reconnect_timer_first_attempt_at_once_then_every_interval() {
        let clock = FakeClock::new();
        let mut t = ReconnectTimer::new(RECONNECT_INTERVAL);
        assert!(t.due(clock.now()));
        t.attempted(clock.now());
        assert!(!t.due(clock.now()));
        assert_eq!(t.wait_time(clock.now()), Duration::from_secs(5));
        clock.advance(Duration::from_millis(4999));
        assert!(!t.due(clock.now()));
        assert_eq!(t.wait_time(clock.now()), Duration::from_millis(1));
        clock.advance(Duration::from_millis(1));
        assert!(t.due(clock.now()));
        t.attempted(clock.now());
        // a connection that lived long breaks: retried at once
        clock.advance(Duration::from_secs(60));
        assert!(t.due(clock.now()));
        assert_eq!(t.wait_time(clock.now()), Duration::ZERO);
    }

    #[test]
    fn mcast_policy_gives_up_after_100_attempts_and_99_pauses() {
        let clock = FakeClock::new();
        let calls = Cell::new(0u32);
        let r: Result<(), RetryError<&str>> = retry_try_again(
            TryAgainPolicy::MCAST,
            |d| clock.advance(d),
            || false,
            |e| *e == "again",
            || {
                calls.set(calls.get() + 1);
                Err("again")
            },
        );
        assert_eq!(r, Err(RetryError::Exhausted(100)));
        assert_eq!(calls.get(), 100);
        assert_eq!(clock.now() - clock.start, Duration::from_millis(9900));
    }

    #[test]
    fn try_again_then_success() {
        let clock = FakeClock::new();
        let calls = Cell::new(0u32);
        let r = retry_try_again(
            TryAgainPolicy::MCAST,
            |d| clock.advance(d),
            || false,
            |e: &&str| *e == "again",
            || {
                calls.set(calls.get() + 1);
                if calls.get() < 4 {
                    Err("again")
                } else {
                    Ok(calls.get())
                }
            },
        );
        assert_eq!(r, Ok(4));
        assert_eq!(clock.now() - clock.start, Duration::from_millis(300));
    }

    #[test]
    fn other_errors_are_not_retried() {
        let calls = Cell::new(0u32);
        let r: Result<(), _> = retry_try_again(
            TryAgainPolicy::MCAST,
            |_| panic!("no pause expected"),
            || false,
            |e: &&str| *e == "again",
            || {
                calls.set(calls.get() + 1);
                Err("library")
            },
        );
        assert_eq!(r, Err(RetryError::Failed("library")));
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn cancel_stops_between_attempts() {
        let clock = FakeClock::new();
        let calls = Cell::new(0u32);
        let r: Result<(), _> = retry_try_again(
            TryAgainPolicy {
                interval: TRY_AGAIN_INTERVAL,
                max_attempts: None,
            },
            |d| clock.advance(d),
            || clock.now() - clock.start >= Duration::from_millis(500),
            |e: &&str| *e == "again",
            || {
                calls.set(calls.get() + 1);
                Err("again")
            },
        );
        assert_eq!(r, Err(RetryError::Cancelled));
        assert_eq!(calls.get(), 5);
    }
}
