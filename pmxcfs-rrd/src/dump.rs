//! The in-memory RRD dump: the latest status data of every RRD key, as
//! served by IPC op 10 (GET_RRD_DUMP) and the `.rrd` plugin file
//! (status.c `rrdentry_hash_set`, `rrd_entry_is_old`, `cfs_rrd_dump`).
//!
//! Semantics kept from C:
//! - every key is stored, known or not (the file update is a separate
//!   step that may refuse the key);
//! - [`RrdDump::set`] refuses empty data, data of 4096 bytes or more, and data
//!   not ending in NUL (SET_STATUS then answers ENOMEM); the stored data is
//!   the part before the first NUL;
//! - the dump is `key:data\n` per entry; entries more than 300 s older than
//!   the dump time are dropped when a dump is built;
//! - a built dump is reused for 2 s: dumps within 2 s of the one that built
//!   it return the same bytes, even if entries were set in between.
//!
//! Where we differ:
//! - C caches the dump as a C string, so a reply served from the cache loses
//!   the trailing NUL that a freshly built one has, and an empty cached dump
//!   is a zero-length reply (which the Perl client sees as undef). Here the
//!   IPC form ([`RrdDump::dump_ipc`]) always ends in exactly one NUL, which
//!   is what C means to send ("never return undef"); the `.rrd` form
//!   ([`RrdDump::dump`]) never has one, as with C over FUSE.
//! - C reuses the cache while `now - built < 2`, which stays true forever if
//!   the clock goes back; here the cache is only used for
//!   `built <= now < built + 2`.
//! - C's hash table gives no order; entries come sorted by key here.

use std::collections::BTreeMap;

use crate::error::RrdError;
use crate::parse::DATA_MAX;

/// Entries older than this many seconds leave the dump.
pub const DUMP_EXPIRE: u64 = 300;
/// A built dump is reused for this many seconds.
pub const DUMP_CACHE: u64 = 2;

#[derive(Debug)]
struct Entry {
    data: Vec<u8>,
    time: u64,
}

/// `key -> (data, time)` of the RRD keys set locally or by peers.
#[derive(Debug, Default)]
pub struct RrdDump {
    entries: BTreeMap<String, Entry>,
    cache: Option<(u64, Vec<u8>)>,
}

/// Checks status data of an `rrd/` key the way C's `rrdentry_hash_set`
/// does, and returns the part before the first NUL.
pub fn check_status_data(data: &[u8]) -> Result<&[u8], RrdError> {
    match data.last() {
        None => Err(RrdError::EmptyData),
        Some(_) if data.len() >= DATA_MAX => Err(RrdError::DataTooLong { len: data.len() }),
        Some(0) => Ok(data.split(|&b| b == 0).next().unwrap_or_default()),
        Some(_) => Err(RrdError::MissingNul),
    }
}

impl RrdDump {
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores the data of `key` (the part after `rrd/`) at time `now`
    /// (seconds since the epoch). `data` is the status data as received,
    /// trailing NUL included; see [`check_status_data`] for what is refused.
    /// Any key is accepted; like the C string it is in C, it ends at a NUL.
    pub fn set(&mut self, key: &str, data: &[u8], now: u64) -> Result<(), RrdError> {
        let data = check_status_data(data)?.to_vec();
        let key = key.split('\0').next().unwrap_or_default();
        self.entries
            .insert(key.to_owned(), Entry { data, time: now });
        Ok(())
    }

    /// Number of entries, expired ones included until the next dump is built.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The dump as the `.rrd` file shows it: `key:data\n` lines, no NUL.
    pub fn dump(&mut self, now: u64) -> Vec<u8> {
        if let Some((built, bytes)) = &self.cache {
            if *built <= now && now - built < DUMP_CACHE {
                return bytes.clone();
            }
        }
        self.entries
            .retain(|_, e| now.saturating_sub(e.time) <= DUMP_EXPIRE);
        let mut out = Vec::new();
        for (key, e) in &self.entries {
            out.extend_from_slice(key.as_bytes());
            out.push(b':');
            out.extend_from_slice(&e.data);
            out.push(b'\n');
        }
        self.cache = Some((now, out.clone()));
        out
    }

    /// The dump as IPC op 10 (GET_RRD_DUMP) answers it: [`RrdDump::dump`]
    /// plus one trailing NUL, cached or not.
    pub fn dump_ipc(&mut self, now: u64) -> Vec<u8> {
        let mut out = self.dump(now);
        out.push(0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: u64 = 1_700_000_000;

    #[test]
    fn set_checks_data_like_c() {
        let mut d = RrdDump::new();
        assert!(matches!(d.set("k", b"", T), Err(RrdError::EmptyData)));
        assert!(matches!(d.set("k", b"abc", T), Err(RrdError::MissingNul)));
        let big = vec![0u8; 4096];
        assert!(matches!(
            d.set("k", &big, T),
            Err(RrdError::DataTooLong { len: 4096 })
        ));
        assert!(d.is_empty());
        let mut ok = vec![b'1'; 4094];
        ok.push(0);
        d.set("k", &ok, T).unwrap();
        d.set("nul", b"\0", T).unwrap();
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn errors_map_to_enomem() {
        let mut d = RrdDump::new();
        for data in [&b""[..], b"x", &[b'x'; 5000]] {
            let e = d.set("k", data, T).unwrap_err();
            assert_eq!(e.set_status_errno(), Some(pmxcfs_api_types::Errno::ENOMEM));
        }
    }

    #[test]
    fn unknown_keys_are_kept() {
        let mut d = RrdDump::new();
        d.set("pve2-node/n1", b"1:2:3\0", T).unwrap();
        d.set("whatever", b"x\0", T).unwrap();
        d.set("", b"y\0", T).unwrap();
        d.set("whatever\0tail", b"z\0", T).unwrap();
        assert_eq!(d.dump(T), b":y\npve2-node/n1:1:2:3\nwhatever:z\n".to_vec());
    }

    #[test]
    fn data_is_cut_at_first_nul_and_replaced() {
        let mut d = RrdDump::new();
        d.set("k", b"old\0", T).unwrap();
        d.set("k", b"new\0tail\0", T).unwrap();
        assert_eq!(d.dump(T), b"k:new\n".to_vec());
    }

    #[test]
    fn ipc_form_has_exactly_one_trailing_nul() {
        let mut d = RrdDump::new();
        assert_eq!(d.dump_ipc(T), b"\0".to_vec());
        // cached and empty: still one NUL (C: zero-length reply)
        assert_eq!(d.dump_ipc(T + 1), b"\0".to_vec());
        assert_eq!(d.dump(T + 1), Vec::<u8>::new());
        d.set("k", b"v\0", T + 2).unwrap();
        assert_eq!(d.dump_ipc(T + 2), b"k:v\n\0".to_vec());
        // cached and not empty: still the NUL (C: none)
        assert_eq!(d.dump_ipc(T + 3), b"k:v\n\0".to_vec());
        assert_eq!(d.dump(T + 3), b"k:v\n".to_vec());
    }

    #[test]
    fn dump_is_cached_for_two_seconds() {
        let mut d = RrdDump::new();
        d.set("a", b"1\0", T).unwrap();
        assert_eq!(d.dump(T), b"a:1\n".to_vec());
        d.set("b", b"2\0", T).unwrap();
        d.set("a", b"9\0", T + 1).unwrap();
        assert_eq!(d.dump(T + 1), b"a:1\n".to_vec());
        assert_eq!(d.dump(T + 2), b"a:9\nb:2\n".to_vec());
    }

    #[test]
    fn clock_going_back_rebuilds() {
        let mut d = RrdDump::new();
        d.set("a", b"1\0", T).unwrap();
        assert_eq!(d.dump(T), b"a:1\n".to_vec());
        d.set("a", b"2\0", T - 100).unwrap();
        assert_eq!(d.dump(T - 100), b"a:2\n".to_vec());
    }

    #[test]
    fn entries_expire_after_300_seconds() {
        let mut d = RrdDump::new();
        d.set("old", b"1\0", T).unwrap();
        d.set("new", b"2\0", T + 100).unwrap();
        // 300 s old is kept (C: diff > 300 expires)
        assert_eq!(d.dump(T + 300), b"new:2\nold:1\n".to_vec());
        assert_eq!(d.dump(T + 302), b"new:2\n".to_vec());
        assert_eq!(d.len(), 1);
        assert_eq!(d.dump(T + 400), b"new:2\n".to_vec());
        assert_eq!(d.dump(T + 402), Vec::<u8>::new());
        assert!(d.is_empty());
        // an entry from the future (clock went back) does not expire
        d.set("future", b"3\0", T + 10_000).unwrap();
        assert_eq!(d.dump(T + 500), b"future:3\n".to_vec());

        let mut d = RrdDump::new();
        d.set("old", b"1\0", T).unwrap();
        assert_eq!(d.dump(T + 301), Vec::<u8>::new());
    }

    #[test]
    fn check_status_data_returns_text_before_nul() {
        assert_eq!(check_status_data(b"abc\0").unwrap(), b"abc");
        assert_eq!(check_status_data(b"a\0b\0").unwrap(), b"a");
        assert_eq!(check_status_data(b"\0").unwrap(), b"");
    }
}
