//! The lock cache of `priv/lock/<id>` directories (memdb.c
//! `memdb_lock_expired`, `memdb_update_locks`).
//!
//! Each node remembers, per lock path, when it first saw the lock in its
//! current state (by checksum). A lock counts as expired once that local
//! time is more than [`LOCK_TIMEOUT`] seconds ago.

use std::collections::HashMap;

use pmxcfs_api_types::LOCK_TIMEOUT;

#[derive(Clone, Debug)]
struct LockInfo {
    ltime: u32,
    csum: [u8; 32],
}

#[derive(Debug, Default)]
pub(crate) struct LockCache {
    locks: HashMap<String, LockInfo>,
}

impl LockCache {
    /// Is the lock expired? Unknown locks and locks whose checksum changed
    /// are (re)recorded as first seen `now` and are not expired.
    pub fn expired(&mut self, path: &str, csum: &[u8; 32], now: u32) -> bool {
        match self.locks.get_mut(path) {
            Some(li) if li.csum != *csum => {
                tracing::warn!("wrong lock csum for '{path}' - reset timeout");
                li.ltime = now;
                li.csum = *csum;
                false
            }
            Some(li) => now > li.ltime && now - li.ltime > LOCK_TIMEOUT,
            None => {
                self.locks.insert(
                    path.to_string(),
                    LockInfo {
                        ltime: now,
                        csum: *csum,
                    },
                );
                false
            }
        }
    }

    /// Forget and re-record a lock as seen `now` (after mkdir or refresh).
    pub fn reset(&mut self, path: &str, csum: &[u8; 32], now: u32) {
        self.locks.insert(
            path.to_string(),
            LockInfo {
                ltime: now,
                csum: *csum,
            },
        );
    }

    pub fn remove(&mut self, path: &str) {
        self.locks.remove(path);
    }

    /// Replace the cache with the given locks, all first seen `now`.
    pub fn replace_all(&mut self, locks: impl IntoIterator<Item = (String, [u8; 32])>, now: u32) {
        self.locks = locks
            .into_iter()
            .map(|(p, csum)| (p, LockInfo { ltime: now, csum }))
            .collect();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.locks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry() {
        let mut c = LockCache::default();
        let a = [1u8; 32];
        assert!(!c.expired("priv/lock/x", &a, 1000));
        assert!(!c.expired("priv/lock/x", &a, 1120));
        assert!(c.expired("priv/lock/x", &a, 1121));
        // checksum change resets the timer
        let b = [2u8; 32];
        assert!(!c.expired("priv/lock/x", &b, 2000));
        assert!(!c.expired("priv/lock/x", &b, 2100));
        assert!(c.expired("priv/lock/x", &b, 2121));
        // clock going backwards never expires
        assert!(!c.expired("priv/lock/x", &b, 10));
        c.remove("priv/lock/x");
        assert_eq!(c.len(), 0);
    }
}
