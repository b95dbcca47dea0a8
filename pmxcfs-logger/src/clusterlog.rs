//! The cluster log of one node: the C `clusterlog_t` (logger.c).
//!
//! It owns the ring buffer, the per-node dedup table and the uid counter.
//! Not synchronised itself: the daemon keeps it behind one mutex, as C does.
//!
//! # Dedup (C `dedup_lookup`)
//!
//! For every node (by node digest) the table remembers the (time, uid) of the
//! newest entry accepted. An entry is stored only if it is newer: a later
//! time, or the same time and a higher uid. Everything else is ignored as a
//! duplicate (an entry that arrives twice, or late).
//!
//! # Merge (C `clusterlog_merge`, run when the kvstore group syncs)
//!
//! All nodes' buffers (the local one being this log's own buffer) are walked
//! newest first in parallel, always taking the entry with the latest time
//! (ties: the node listed first; an entry with time 0 is never taken and
//! ends its buffer's walk, as in C). Each entry whose (time, node digest,
//! uid) was not taken yet is kept and recorded in a fresh dedup table; the
//! walk stops once the kept entries' ring sizes reach
//! `131072 - 8 - 4096` bytes. The kept entries are then copied, oldest
//! first, into a new default-size buffer, which replaces the log's buffer,
//! and the fresh dedup table replaces the old one.

use std::collections::{BTreeMap, HashMap};
use std::iter::Peekable;

use crate::buffer::{sort_key, Walk, CLOG_BUFFER_HEADER_SIZE, CLOG_DEFAULT_SIZE};
use crate::entry::CLOG_MAX_ENTRY_SIZE;
use crate::{ClogBuffer, ClogEntry, ClogError};

/// Newest (time, uid) accepted from one node.
#[derive(Debug, Clone, Copy)]
struct Newest {
    time: u32,
    uid: u32,
}

/// Dedup table keyed by node digest.
type DedupTable = HashMap<u64, Newest>;

/// The cluster log: ring buffer plus dedup state.
#[derive(Debug, Clone, Default)]
pub struct ClusterLog {
    base: ClogBuffer,
    dedup: DedupTable,
    /// Last uid given out by [`ClusterLog::add`] (C: the static
    /// `uid_counter`, starting at 0 so the first entry has uid 1).
    uid_counter: u32,
}

impl ClusterLog {
    /// An empty log with a default-size buffer (C `clusterlog_new`).
    pub fn new() -> ClusterLog {
        ClusterLog::default()
    }

    /// The ring buffer.
    pub fn buffer(&self) -> &ClogBuffer {
        &self.base
    }

    /// Creates an entry of this node and inserts it (C `clog_pack` plus
    /// `clusterlog_insert`, as `clusterlog_add` and the LOG_CLUSTER_MSG IPC
    /// handler do).
    ///
    /// Strings are C strings (cut at the first NUL); node, ident and tag are
    /// capped at 254 bytes, the message is converted with `utf8_to_ascii`
    /// (see [`ClogEntry::pack`]). A message that is empty or only a NUL is
    /// accepted.
    ///
    /// Returns the new entry, to be broadcast to the other nodes as a
    /// kvstore LOG message; `None` if the priority is 8 or more: C's caller
    /// reports success then but drops the entry (no uid is used up). The
    /// entry is returned even if the dedup check kept it out of the local
    /// buffer (its time is older than this node's newest entry), because C
    /// sends it all the same.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        node: impl AsRef<[u8]>,
        ident: impl AsRef<[u8]>,
        tag: impl AsRef<[u8]>,
        pid: u32,
        priority: u8,
        time: u32,
        msg: impl AsRef<[u8]>,
    ) -> Option<ClogEntry> {
        let uid = self.uid_counter.wrapping_add(1);
        let entry = match ClogEntry::pack(
            uid,
            node.as_ref(),
            ident.as_ref(),
            tag.as_ref(),
            pid,
            time,
            priority,
            msg.as_ref(),
        ) {
            Ok(entry) => entry,
            Err(err) => {
                tracing::debug!("cluster log entry dropped: {err}");
                return None;
            }
        };
        self.uid_counter = uid;
        self.insert(&entry);
        Some(entry)
    }

    /// Stores an entry, local or received from another node, unless the
    /// dedup table says it is not newer than what this node already has from
    /// the entry's node (C `clusterlog_insert`). Returns whether it was
    /// stored.
    pub fn insert(&mut self, entry: &ClogEntry) -> bool {
        if !dedup_lookup(&mut self.dedup, entry) {
            tracing::info!("ignore insert of duplicate cluster log");
            return false;
        }
        match self.base.add(entry) {
            Ok(()) => true,
            Err(err) => {
                tracing::warn!("cluster log entry not stored: {err}");
                false
            }
        }
    }

    /// Sorts the buffer in place (oldest first, so the newest is at `cpos`)
    /// and returns a copy of it in the C layout: this node's kvstore state
    /// (C `clusterlog_get_state`).
    pub fn get_state(&mut self) -> Vec<u8> {
        self.base = self.base.sort();
        self.base.to_bytes()
    }

    /// Merges the buffers of all nodes of a sync into this log (see the
    /// module documentation). `states` lists one buffer per node in the
    /// order of the sync; the entry at `local_index` is ignored and this
    /// log's own buffer used instead; `None` stands for a node whose state
    /// was unusable.
    pub fn merge(
        &mut self,
        states: &[Option<&ClogBuffer>],
        local_index: usize,
    ) -> Result<(), ClogError> {
        if local_index >= states.len() {
            return Err(ClogError::LocalIndexOutOfRange {
                index: local_index,
                count: states.len(),
            });
        }
        let (base, dedup) = {
            let bufs: Vec<Option<&ClogBuffer>> = states
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    if i == local_index {
                        Some(&self.base)
                    } else {
                        *s
                    }
                })
                .collect();
            merge_buffers(&bufs)
        };
        self.base = base;
        self.dedup = dedup;
        Ok(())
    }

    /// JSON of the newest `max_entries` entries, optionally only those of
    /// `user` (C `clusterlog_dump`); see [`ClogBuffer::dump_json`].
    pub fn dump_json(&self, max_entries: usize, user: Option<&str>) -> String {
        self.base.dump_json(max_entries, user)
    }
}

/// C `dedup_lookup`: records the entry and says whether it is new.
fn dedup_lookup(dedup: &mut DedupTable, entry: &ClogEntry) -> bool {
    let candidate = Newest {
        time: entry.time,
        uid: entry.uid,
    };
    match dedup.get_mut(&entry.node_digest) {
        None => {
            dedup.insert(entry.node_digest, candidate);
            true
        }
        Some(newest) => {
            let newer =
                entry.time > newest.time || (entry.time == newest.time && entry.uid > newest.uid);
            if newer {
                *newest = candidate;
            }
            newer
        }
    }
}

/// The body of C `clusterlog_merge`: returns the new buffer and dedup table.
fn merge_buffers(bufs: &[Option<&ClogBuffer>]) -> (ClogBuffer, DedupTable) {
    let maxsize = CLOG_DEFAULT_SIZE - CLOG_BUFFER_HEADER_SIZE - CLOG_MAX_ENTRY_SIZE;
    let mut walks: Vec<Option<Peekable<Walk<'_>>>> = bufs
        .iter()
        .map(|b| b.map(|b| b.walk().peekable()))
        .collect();
    // Key -> (buffer index, position, size) of the entry to copy.
    let mut tree: BTreeMap<(u32, u64, u32), (usize, usize, usize)> = BTreeMap::new();
    let mut dedup = DedupTable::new();
    let mut logsize: usize = 0;

    loop {
        // Select the entry with the latest time (strictly later than 0).
        let mut found = None;
        let mut last = 0;
        for (i, walk) in walks.iter_mut().enumerate() {
            if let Some(r) = walk.as_mut().and_then(|w| w.peek()) {
                if r.entry.time > last {
                    last = r.entry.time;
                    found = Some(i);
                }
            }
        }
        let Some(r) = found.and_then(|i| Some((i, walks[i].as_mut()?.next()?))) else {
            break;
        };
        let (i, r) = r;
        let key = sort_key(&r.entry);
        if let std::collections::btree_map::Entry::Vacant(slot) = tree.entry(key) {
            slot.insert((i, r.pos, r.size));
            dedup_lookup(&mut dedup, &r.entry);
            // C: `logsize += cur->next - cpos`, in u32 arithmetic.
            logsize += r.entry.next.wrapping_sub(r.pos as u32) as usize;
            if logsize >= maxsize {
                break;
            }
        }
    }

    let mut res = ClogBuffer::new();
    for &(i, pos, size) in tree.values() {
        if let Some(buf) = bufs[i] {
            if let Err(err) = res.copy_raw(buf.raw(pos, size)) {
                tracing::debug!("cluster log: entry not copied while merging: {err}");
            }
        }
    }
    (res, dedup)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fnv1a_64;

    #[test]
    fn starting_cluster_log_entry() {
        // status.c `cfs_status_init`.
        let mut log = ClusterLog::new();
        let e = log
            .add(
                "pve1",
                "root",
                "cluster",
                4242,
                6,
                1_700_000_000,
                "starting cluster log",
            )
            .unwrap();
        assert_eq!(e.uid, 1);
        assert_eq!(log.buffer().cpos(), 8);
        assert_eq!(
            log.dump_json(50, None),
            "{\n\"data\": [\n{\"uid\": 1, \"time\": 1700000000, \"pri\": 6, \
             \"tag\": \"cluster\", \"pid\": 4242, \"node\": \"pve1\", \"user\": \"root\", \
             \"msg\": \"starting cluster log\"}\n]\n}\n"
        );
        // What gets broadcast decodes to the same entry.
        assert_eq!(ClogEntry::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn uid_counter_and_priority() {
        let mut log = ClusterLog::new();
        assert_eq!(log.add("n", "u", "t", 1, 6, 10, "a").unwrap().uid, 1);
        assert!(log.add("n", "u", "t", 1, 8, 10, "dropped").is_none());
        assert!(log.add("n", "u", "t", 1, 255, 10, "dropped").is_none());
        assert_eq!(log.add("n", "u", "t", 1, 0, 10, "b").unwrap().uid, 2);
        // A message that is only a NUL is accepted as an empty message.
        let e = log.add("n", "u", "t", 1, 7, 10, b"\0").unwrap();
        assert_eq!((e.uid, e.msg.as_str()), (3, ""));
        assert_eq!(log.buffer().len(), 3);
    }

    #[test]
    fn dedup_per_node_on_time_and_uid() {
        let mut log = ClusterLog::new();
        let mk = |node: &str, uid, time| {
            ClogEntry::pack(uid, node.as_bytes(), b"u", b"t", 1, time, 6, b"m").unwrap()
        };
        assert!(log.insert(&mk("a", 5, 100)));
        assert!(!log.insert(&mk("a", 5, 100)), "same entry twice");
        assert!(!log.insert(&mk("a", 4, 100)), "lower uid, same time");
        assert!(!log.insert(&mk("a", 9, 99)), "older time");
        assert!(log.insert(&mk("a", 6, 100)), "higher uid, same time");
        assert!(log.insert(&mk("a", 1, 101)), "newer time, lower uid");
        assert!(log.insert(&mk("b", 1, 50)), "other node: own table entry");
        assert_eq!(log.buffer().len(), 4);
        // A local entry with an older clock is returned but not stored.
        let e = log.add("a", "u", "t", 1, 6, 90, "clock went back").unwrap();
        assert_eq!(e.msg, "clock went back");
        assert_eq!(log.buffer().len(), 4);
    }

    #[test]
    fn wrap_around_like_c() {
        // The C "wrap" scenario (as logtest2.c: 184 big, 1629 small entries
        // after "starting cluster log"), checked against the compiled
        // logger.c: head position and links, a FNV-1a 64 of the whole
        // 131072-byte buffer, of the JSON dump and of the sorted state.
        let mut log = ClusterLog::new();
        let t = 1_700_000_000;
        log.add(
            "testnode",
            "root",
            "cluster",
            1,
            6,
            t,
            "starting cluster log",
        );
        let big = "a".repeat(1000);
        for i in 0..184 {
            log.add("testnode", "root", "cluster", 1, 6, t + i / 7, &big);
        }
        for i in 0..1629 {
            let msg = format!("short {i}");
            log.add("testnode", "root", "cluster", 1, 6, t + 30 + i / 13, msg);
        }
        let b = log.buffer();
        assert_eq!(b.size(), 131_072);
        assert_eq!(b.cpos(), 70_712);
        let head = b.iter().next().unwrap();
        assert_eq!((head.prev, head.next, head.uid), (70_624, 70_800, 1814));
        assert_eq!(fnv1a_64(b.as_bytes()), 0xeb3c_297d_c788_3f7a);

        let json = log.dump_json(100_000, None);
        assert_eq!(json.lines().count(), 1528);
        assert_eq!(fnv1a_64(json.as_bytes()), 0xed6e_3cef_78d3_ce6b);

        let state = log.get_state();
        assert_eq!(state.len(), 131_072);
        assert_eq!(log.buffer().cpos(), 126_872);
        assert_eq!(fnv1a_64(&state), 0x138b_7054_ba8d_1a08);
        // Sorting keeps the dump.
        assert_eq!(log.dump_json(100_000, None), json);
    }

    fn node_log(entries: &[(&str, u32, u32, u32, &str)]) -> ClusterLog {
        let mut log = ClusterLog::new();
        for &(node, uid, pid, time, msg) in entries {
            let e = ClogEntry::pack(
                uid,
                node.as_bytes(),
                b"root",
                b"cluster",
                pid,
                time,
                6,
                msg.as_bytes(),
            )
            .unwrap();
            assert!(log.insert(&e));
        }
        log
    }

    #[test]
    fn merge_three_nodes_like_c() {
        // The C "merge" scenario: three logs, states taken with
        // clusterlog_get_state, merged into the second one (local index 1).
        let a = node_log(&[
            ("nodeA", 1, 1, 1000, "a1"),
            ("nodeA", 3, 1, 1002, "a2"),
            ("nodeA", 6, 1, 1004, "a3"),
        ]);
        let mut b = node_log(&[("nodeB", 2, 2, 1001, "b1"), ("nodeB", 5, 2, 1003, "b2")]);
        let c = node_log(&[("nodeC", 4, 3, 1002, "c1")]);
        let sa = ClogBuffer::from_bytes(&a.clone().get_state()).unwrap();
        let sc = ClogBuffer::from_bytes(&c.clone().get_state()).unwrap();
        b.get_state();
        b.merge(&[Some(&sa), None, Some(&sc)], 1).unwrap();
        let expected = r#"{
"data": [
{"uid": 6, "time": 1004, "pri": 6, "tag": "cluster", "pid": 1, "node": "nodeA", "user": "root", "msg": "a3"},
{"uid": 5, "time": 1003, "pri": 6, "tag": "cluster", "pid": 2, "node": "nodeB", "user": "root", "msg": "b2"},
{"uid": 4, "time": 1002, "pri": 6, "tag": "cluster", "pid": 3, "node": "nodeC", "user": "root", "msg": "c1"},
{"uid": 3, "time": 1002, "pri": 6, "tag": "cluster", "pid": 1, "node": "nodeA", "user": "root", "msg": "a2"},
{"uid": 2, "time": 1001, "pri": 6, "tag": "cluster", "pid": 2, "node": "nodeB", "user": "root", "msg": "b1"},
{"uid": 1, "time": 1000, "pri": 6, "tag": "cluster", "pid": 1, "node": "nodeA", "user": "root", "msg": "a1"}
]
}
"#;
        assert_eq!(b.dump_json(50, None), expected);
        assert_eq!(b.buffer().cpos(), 368);
        assert_eq!(fnv1a_64(b.buffer().as_bytes()), 0xb0ce_0b6b_4c9e_e5bf);

        // The dedup table now knows every node's newest entry.
        let old_a = ClogEntry::pack(3, b"nodeA", b"root", b"cluster", 1, 1002, 6, b"a2").unwrap();
        assert!(!b.insert(&old_a));
        let new_c = ClogEntry::pack(7, b"nodeC", b"root", b"cluster", 3, 1005, 6, b"c2").unwrap();
        assert!(b.insert(&new_c));
    }

    #[test]
    fn merge_dedups_entries_held_by_several_nodes() {
        // Node A received B's entries over the kvstore before the sync.
        let a = node_log(&[
            ("nodeA", 1, 1, 10, "a1"),
            ("nodeB", 1, 2, 11, "b1"),
            ("nodeA", 2, 1, 12, "a2"),
            ("nodeB", 2, 2, 13, "b2"),
        ]);
        let b = node_log(&[("nodeB", 1, 2, 11, "b1"), ("nodeB", 2, 2, 13, "b2")]);
        let sa = ClogBuffer::from_bytes(&a.clone().get_state()).unwrap();
        let sb = ClogBuffer::from_bytes(&b.clone().get_state()).unwrap();
        for local in [0, 1] {
            let mut log = if local == 0 { a.clone() } else { b.clone() };
            log.merge(&[Some(&sa), Some(&sb)], local).unwrap();
            let msgs: Vec<String> = log.buffer().iter().map(|e| e.msg).collect();
            assert_eq!(msgs, ["b2", "a2", "b1", "a1"], "local index {local}");
        }
        // Both nodes end up with identical buffers.
        let mut a2 = a.clone();
        let mut b2 = b.clone();
        a2.merge(&[None, Some(&sb)], 0).unwrap();
        b2.merge(&[Some(&sa), None], 1).unwrap();
        assert_eq!(a2.buffer(), b2.buffer());
    }

    #[test]
    fn merge_stops_near_127_kib() {
        // Three nodes with full buffers: the result keeps the newest entries
        // of all of them until 126968 bytes, without wrapping.
        let mut logs: Vec<ClusterLog> = Vec::new();
        for n in 0..3u32 {
            let mut log = ClusterLog::new();
            let node = format!("node{n}");
            for i in 0..1500u32 {
                log.add(
                    &node,
                    "root",
                    "cluster",
                    n,
                    6,
                    1000 + i * 3 + n,
                    "x".repeat(100),
                );
            }
            logs.push(log);
        }
        let states: Vec<ClogBuffer> = logs
            .iter_mut()
            .map(|l| ClogBuffer::from_bytes(&l.get_state()).unwrap())
            .collect();
        let refs: Vec<Option<&ClogBuffer>> = states.iter().map(Some).collect();
        let mut merged = logs[0].clone();
        merged.merge(&refs, 0).unwrap();
        let entries: Vec<ClogEntry> = merged.buffer().iter().collect();
        // 48 + 6 + 5 + 8 + 101 = 168 bytes per entry; stop once
        // 126968 bytes are reached: ceil(126968 / 168) = 756 entries.
        assert_eq!(entries.len(), 756);
        assert_eq!(entries[0].time, 1000 + 1499 * 3 + 2);
        assert!(entries.windows(2).all(|w| w[0].time > w[1].time));
        // Written from position 8 on, no wrap-around.
        assert_eq!(merged.buffer().cpos() as usize, 8 + 755 * 168);
        assert_eq!(entries.last().unwrap().prev, 0);
    }

    #[test]
    fn merge_checks_local_index() {
        let mut log = ClusterLog::new();
        assert_eq!(
            log.merge(&[None, None], 2),
            Err(ClogError::LocalIndexOutOfRange { index: 2, count: 2 })
        );
        assert!(log.merge(&[None], 0).is_ok());
        assert!(log.buffer().is_empty());
    }

    #[test]
    fn merge_with_garbage_states() {
        let mut rng = crate::testutil::Rng::new(7);
        let mut log = node_log(&[("nodeA", 1, 1, 10, "a1"), ("nodeA", 2, 1, 12, "a2")]);
        let good = log.clone().get_state();
        for _ in 0..200 {
            let changes = 1 + rng.below(200);
            let bytes = rng.mutate(&good, changes);
            let Ok(other) = ClogBuffer::from_bytes(&bytes) else {
                continue;
            };
            log.merge(&[Some(&other), None], 1).unwrap();
            let _ = log.dump_json(1000, Some("root"));
        }
    }
}
