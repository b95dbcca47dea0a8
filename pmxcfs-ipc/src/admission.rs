//! Who gets how much of the server: caps on connections, on handshakes in
//! progress and on shared memory, per user and for all users together,
//! with room kept for root.
//!
//! The peer's credentials (`SO_PEERCRED`) are known as soon as a socket is
//! accepted, so the accept loop decides before anything is read or
//! allocated (see `connection::admit`). Three pools are counted:
//!
//! * connections: every accepted socket of a client that may use IPC, from
//!   accept to close (its handshake included);
//! * handshakes: every accepted socket of a user other than root until its
//!   connection response is sent, refused users included (they hold one
//!   for at most [`crate::connection::REFUSE_GRACE`]); root's handshakes
//!   are not counted (they are few, and root could stop the daemon anyway);
//! * shared memory: the bytes of the ring buffers of the connections of
//!   users other than root.
//!
//! Each pool has a cap for everybody (root included), one for all users but
//! root together (the difference is what is kept for root) and one for each
//! uid but root. A user without room gets nothing: no handshake slot means
//! the socket is closed at once; no connection or shared-memory room means
//! the connection request is answered with `-EAGAIN`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// No cap.
pub const UNLIMITED: u64 = u64::MAX;

/// Descriptors kept for everything else the daemon has open (database,
/// FUSE device, journald, rrdcached, later corosync) when the caps are
/// fitted to `RLIMIT_NOFILE`.
pub const FD_RESERVE: u64 = 256;

/// The caps of one pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolLimits {
    /// All users together, root included.
    pub all: u64,
    /// All users but root together; `all - others` is kept for root.
    pub others: u64,
    /// Each uid but root.
    pub per_user: u64,
}

/// The caps in force: the configured ones (`ServerConfig`), fitted to the
/// descriptor limit and the size of `/dev/shm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps {
    pub connections: PoolLimits,
    pub handshakes: PoolLimits,
    pub shm: PoolLimits,
}

impl Caps {
    pub fn from_config(c: &crate::server::ServerConfig) -> Caps {
        let n = |v: usize| v as u64;
        Caps {
            connections: PoolLimits {
                all: n(c.max_connections),
                others: n(c
                    .max_connections
                    .saturating_sub(c.root_reserved_connections)),
                per_user: n(c.max_connections_per_user),
            },
            handshakes: PoolLimits {
                all: UNLIMITED,
                others: n(c.max_handshakes),
                per_user: n(c.max_handshakes_per_user),
            },
            shm: PoolLimits {
                all: UNLIMITED,
                others: c.max_shm_bytes,
                per_user: c.max_shm_bytes_per_user,
            },
        }
    }

    /// Descriptors the IPC server can hold at most: one per connection and
    /// one per handshake of a user other than root (refused users and users
    /// without a free connection slot hold only a handshake).
    pub fn fds_needed(&self) -> u64 {
        self.connections.all.saturating_add(self.handshakes.others)
    }

    /// Shrink the connection and handshake caps in proportion so that
    /// [`Caps::fds_needed`] fits in `nofile` descriptors minus
    /// [`FD_RESERVE`]. Root keeps a reserve of at least one connection.
    pub fn fit_fd_limit(mut self, nofile: u64) -> Caps {
        let avail = nofile.saturating_sub(FD_RESERVE).max(4);
        let need = self.fds_needed();
        if need <= avail {
            return self;
        }
        let scale = |v: u64| ((v as u128 * avail as u128 / need as u128) as u64).max(1);
        let (c, h) = (self.connections, self.handshakes);
        let hs_others = scale(h.others);
        self.handshakes = PoolLimits {
            all: h.all,
            others: hs_others,
            per_user: h.per_user.min(hs_others),
        };
        let all = avail - hs_others;
        let reserve = scale(c.all - c.others).min(all - 1);
        let others = all - reserve;
        self.connections = PoolLimits {
            all,
            others,
            per_user: scale(c.per_user).min(others),
        };
        self
    }

    /// Let users other than root have at most a quarter of `/dev/shm`
    /// (`size` bytes), so that they cannot fill it for root.
    pub fn fit_shm_size(mut self, size: u64) -> Caps {
        let others = self.shm.others.min(size / 4);
        self.shm.others = others;
        self.shm.per_user = self.shm.per_user.min(others);
        self
    }
}

/// The pools.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    Connections,
    Handshakes,
    Shm,
}

#[derive(Default, Debug)]
struct Usage {
    all: u64,
    others: u64,
    by_uid: HashMap<u32, u64>,
}

impl Usage {
    fn try_take(&mut self, lim: &PoolLimits, uid: u32, n: u64) -> bool {
        let fits = |used: u64, cap: u64| used.checked_add(n).is_some_and(|v| v <= cap);
        if !fits(self.all, lim.all) {
            return false;
        }
        if uid != 0 {
            let mine = self.by_uid.get(&uid).copied().unwrap_or(0);
            if !fits(self.others, lim.others) || !fits(mine, lim.per_user) {
                return false;
            }
            self.others += n;
            self.by_uid.insert(uid, mine + n);
        }
        self.all += n;
        true
    }

    fn give_back(&mut self, uid: u32, n: u64) {
        self.all -= n;
        if uid != 0 {
            self.others -= n;
            if let Some(v) = self.by_uid.get_mut(&uid) {
                *v -= n;
                if *v == 0 {
                    self.by_uid.remove(&uid);
                }
            }
        }
    }
}

/// The counters of the three pools, shared by the accept loop and the
/// connection tasks.
#[derive(Debug)]
pub struct Admission {
    caps: Caps,
    usage: Mutex<[Usage; 3]>,
}

impl Admission {
    pub fn new(caps: Caps) -> Arc<Admission> {
        Arc::new(Admission {
            caps,
            usage: Mutex::new(Default::default()),
        })
    }

    pub fn caps(&self) -> &Caps {
        &self.caps
    }

    fn limits(&self, pool: Pool) -> &PoolLimits {
        match pool {
            Pool::Connections => &self.caps.connections,
            Pool::Handshakes => &self.caps.handshakes,
            Pool::Shm => &self.caps.shm,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Usage; 3]> {
        self.usage.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take `n` units of `pool` for `uid`, or None if that would exceed a
    /// cap. The units are given back when the permit is dropped.
    pub fn try_acquire(self: &Arc<Self>, pool: Pool, uid: u32, n: u64) -> Option<Permit> {
        let ok = self.lock()[pool as usize].try_take(self.limits(pool), uid, n);
        ok.then(|| Permit {
            admission: Arc::clone(self),
            pool,
            uid,
            n,
        })
    }

    /// Units of `pool` in use: by `uid`, or by everybody.
    pub fn in_use(&self, pool: Pool, uid: Option<u32>) -> u64 {
        let usage = self.lock();
        let u = &usage[pool as usize];
        match uid {
            None => u.all,
            Some(0) => u.all - u.others,
            Some(uid) => u.by_uid.get(&uid).copied().unwrap_or(0),
        }
    }
}

/// Units of one pool held by a connection.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    pool: Pool,
    uid: u32,
    n: u64,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.lock()[self.pool as usize].give_back(self.uid, self.n);
    }
}

/// At most one message per interval, with the number of those suppressed
/// since the last one (a hostile flood must not flood the journal).
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl LogLimiter {
    pub const fn new(interval: Duration) -> LogLimiter {
        LogLimiter {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// Some(number suppressed before) if a message may be logged now.
    pub fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        match s.0 {
            Some(last) if now.duration_since(last) < self.interval => {
                s.1 += 1;
                None
            }
            _ => {
                let suppressed = s.1;
                *s = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::ServerConfig;

    fn caps() -> Caps {
        Caps {
            connections: PoolLimits {
                all: 10,
                others: 8,
                per_user: 3,
            },
            handshakes: PoolLimits {
                all: UNLIMITED,
                others: 4,
                per_user: 2,
            },
            shm: PoolLimits {
                all: UNLIMITED,
                others: 100,
                per_user: 60,
            },
        }
    }

    #[test]
    fn per_user_cap() {
        let a = Admission::new(caps());
        let p: Vec<_> = (0..3)
            .map(|_| a.try_acquire(Pool::Connections, 33, 1).unwrap())
            .collect();
        assert!(a.try_acquire(Pool::Connections, 33, 1).is_none());
        // Another user is not affected.
        let q = a.try_acquire(Pool::Connections, 1000, 1).unwrap();
        assert_eq!(a.in_use(Pool::Connections, Some(33)), 3);
        assert_eq!(a.in_use(Pool::Connections, Some(1000)), 1);
        assert_eq!(a.in_use(Pool::Connections, None), 4);
        drop(p);
        assert_eq!(a.in_use(Pool::Connections, Some(33)), 0);
        assert!(a.try_acquire(Pool::Connections, 33, 1).is_some());
        drop(q);
        assert_eq!(a.in_use(Pool::Connections, None), 0);
    }

    #[test]
    fn root_reserve_cannot_be_taken_by_others() {
        let a = Admission::new(caps());
        // Many users together stop at `others` (8 of 10).
        let mut held = vec![];
        for uid in 1..=100u32 {
            if let Some(p) = a.try_acquire(Pool::Connections, uid, 1) {
                held.push(p);
            }
        }
        assert_eq!(held.len(), 8);
        // Root gets the rest, then nobody gets anything.
        let r1 = a.try_acquire(Pool::Connections, 0, 1).unwrap();
        let r2 = a.try_acquire(Pool::Connections, 0, 1).unwrap();
        assert!(a.try_acquire(Pool::Connections, 0, 1).is_none());
        assert_eq!(a.in_use(Pool::Connections, Some(0)), 2);
        drop((r1, r2));
        // Root alone may use everything; others then find no room.
        drop(held);
        let root: Vec<_> = (0..10)
            .map(|_| a.try_acquire(Pool::Connections, 0, 1).unwrap())
            .collect();
        assert!(a.try_acquire(Pool::Connections, 33, 1).is_none());
        assert!(a.try_acquire(Pool::Connections, 0, 1).is_none());
        drop(root);
        assert!(a.try_acquire(Pool::Connections, 33, 1).is_some());
    }

    #[test]
    fn handshakes_and_shm_do_not_limit_root() {
        let a = Admission::new(caps());
        let h: Vec<_> = (0..1000)
            .map(|_| a.try_acquire(Pool::Handshakes, 0, 1).unwrap())
            .collect();
        // Root's handshakes leave the others' room alone.
        let o1 = a.try_acquire(Pool::Handshakes, 33, 1).unwrap();
        let o2 = a.try_acquire(Pool::Handshakes, 33, 1).unwrap();
        assert!(a.try_acquire(Pool::Handshakes, 33, 1).is_none());
        let o3 = a.try_acquire(Pool::Handshakes, 34, 1).unwrap();
        let o4 = a.try_acquire(Pool::Handshakes, 35, 1).unwrap();
        assert!(a.try_acquire(Pool::Handshakes, 36, 1).is_none());
        assert!(a.try_acquire(Pool::Handshakes, 0, 1).is_some());
        drop((h, o1, o2, o3, o4));

        let s1 = a.try_acquire(Pool::Shm, 33, 60).unwrap();
        assert!(a.try_acquire(Pool::Shm, 33, 1).is_none());
        let s2 = a.try_acquire(Pool::Shm, 34, 40).unwrap();
        assert!(a.try_acquire(Pool::Shm, 35, 1).is_none());
        assert!(a.try_acquire(Pool::Shm, 0, 1 << 40).is_some());
        assert!(a.try_acquire(Pool::Shm, 34, u64::MAX).is_none());
        drop((s1, s2));
        assert_eq!(a.in_use(Pool::Shm, None), 0);
    }

    #[test]
    fn default_caps() {
        let c = Caps::from_config(&ServerConfig::default());
        assert_eq!(
            c.connections,
            PoolLimits {
                all: 1024,
                others: 960,
                per_user: 256
            }
        );
        assert_eq!((c.handshakes.others, c.handshakes.per_user), (64, 16));
        assert_eq!(c.handshakes.all, UNLIMITED);
        assert_eq!(c.fds_needed(), 1088);
        // Fits the shipped unit's limits once raised to the hard limit
        // (systemd: 1024 soft, 524288 hard).
        assert_eq!(c.fit_fd_limit(524288), c);
        assert_eq!(c.fit_fd_limit(1088 + FD_RESERVE), c);
    }

    #[test]
    fn fitting_to_the_fd_limit() {
        let c = Caps::from_config(&ServerConfig::default());
        for nofile in [0, 1, 100, 260, 300, 1024, 1087 + FD_RESERVE, 4096] {
            let f = c.fit_fd_limit(nofile);
            let avail = nofile.saturating_sub(FD_RESERVE).max(4);
            assert!(f.fds_needed() <= avail, "{nofile}: {f:?}");
            let (cn, hs) = (f.connections, f.handshakes);
            assert!(cn.others < cn.all, "{nofile}: root keeps a reserve");
            assert!(cn.per_user >= 1 && cn.per_user <= cn.others, "{nofile}");
            assert!(hs.others >= 1 && hs.per_user >= 1 && hs.per_user <= hs.others);
            assert!(cn.all <= c.connections.all && hs.others <= c.handshakes.others);
        }
        // The soft limit of a plain service (1024): 768 descriptors for IPC.
        let f = c.fit_fd_limit(1024);
        assert_eq!(f.fds_needed(), 768);
        assert_eq!(f.handshakes.others, 45);
        assert_eq!(f.connections.all, 723);
        assert_eq!(f.connections.all - f.connections.others, 45);
        assert_eq!(f.connections.per_user, 180);
    }

    #[test]
    fn fitting_to_dev_shm() {
        let c = Caps::from_config(&ServerConfig::default());
        assert_eq!(c.fit_shm_size(64 << 30), c);
        let f = c.fit_shm_size(1 << 30);
        assert_eq!((f.shm.others, f.shm.per_user), (256 << 20, 256 << 20));
        let f = c.fit_shm_size(256 << 20);
        assert_eq!((f.shm.others, f.shm.per_user), (64 << 20, 64 << 20));
        assert_eq!(f.connections, c.connections);
    }

    #[test]
    fn log_limiter() {
        let l = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        let l = LogLimiter::new(Duration::ZERO);
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), Some(0));
    }
}
