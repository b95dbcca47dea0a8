//! The `pve_dcdb_v1` application (dcdb.c): filesystem operations applied
//! in agreed order on every node, and the resync of a joining or healed
//! node from the leader. It reaches the database only through
//! [`DcdbStore`], which the daemon implements over MemDb.

use pmxcfs_api_types::{Errno, Inode, NodeId, Operation, TreeEntry};

use crate::dcdb::{decode_operation, encode_operation, DcdbMessageType, MemdbIndex, UpdatePayload};
use crate::machine::{AppError, Application, DeliverCtx, SyncInfo, Updates};
use crate::wire::CSUM_SIZE;

/// CPG group of the configuration database (with its trailing NUL, as C
/// joins it: C uses strlen + 1 as the name length).
pub const DCDB_GROUP: &str = "pve_dcdb_v1\0";
/// `DCDB_PROTOCOL_VERSION`.
pub const DCDB_PROTOCOL_VERSION: u32 = 1;

/// What dcdb needs from the database.
pub trait DcdbStore {
    /// Mutations are allowed (quorum).
    fn quorate(&self) -> bool;
    /// Apply a delivered operation as node `writer` at `mtime`.
    fn apply(&mut self, op: &Operation, writer: NodeId, mtime: u32) -> Result<usize, Errno>;
    /// The database has failed (every mutation EIO): C's `memdb->errors`.
    fn failed(&self) -> bool;
    /// `path` is a lock directory whose entry checksum is `csum`.
    fn lock_matches(&self, path: &str, csum: &[u8; 32]) -> bool;
    /// That lock is older than 120 s on this node.
    fn lock_expired(&self, path: &str, csum: &[u8; 32]) -> bool;
    /// `memdb_encode_index`.
    fn index(&self) -> Vec<u8>;
    /// `memdb_compute_checksum`.
    fn checksum(&self) -> [u8; CSUM_SIZE];
    /// One entry (inode 0: the root) as an UPDATE carries it.
    fn entry(&self, inode: Inode) -> Option<TreeEntry>;
    /// Become the leader's database (`bdb_backend_commit_update`).
    fn commit_sync(&mut self, master_index: &[u8], updates: &[TreeEntry]) -> Result<(), Errno>;
    /// `corosync.conf` changed through a delivered message or a resync
    /// (`dcdb_sync_corosync_conf`); `local`: this node sent the change.
    fn corosync_conf_changed(&mut self, _local: bool) {}
}

/// The dcdb application over a store.
pub struct Dcdb<S> {
    pub store: S,
    /// The leader's index of the current round.
    master: Option<Vec<u8>>,
    /// UPDATEs received in the current round.
    updates: Vec<TreeEntry>,
}

impl<S: DcdbStore> Dcdb<S> {
    pub fn new(store: S) -> Self {
        Dcdb {
            store,
            master: None,
            updates: Vec::new(),
        }
    }
}

/// The NORMAL message of an operation: (subtype, payload).
pub fn operation_message(op: &Operation) -> Result<(u16, Vec<u8>), crate::dcdb::DcdbError> {
    let mut payload = Vec::new();
    let ty = encode_operation(op, &mut payload)?;
    Ok((ty as u16, payload))
}

/// `dcdb_select_leader`: the highest version, then the latest mtime; on a
/// tie the first in member order (members are sorted by node id, pid).
fn select_leader(idx: &[MemdbIndex]) -> usize {
    let mut leader = 0;
    for (i, x) in idx.iter().enumerate().skip(1) {
        let l = &idx[leader];
        if (x.version == l.version && x.mtime > l.mtime) || x.version > l.version {
            leader = i;
        }
    }
    leader
}

/// The inodes whose entries differ between the leader's index and
/// another's (missing there, or another digest), each once, in the
/// leader's order.
fn differing(master: &MemdbIndex, others: &[&MemdbIndex]) -> Vec<Inode> {
    // one set per other index: linear in the entries (a plain scan of
    // every other index per entry was quadratic, ~10 ms at 4,000 files)
    let others: Vec<std::collections::HashSet<(u64, &[u8; 32])>> = others
        .iter()
        .map(|o| o.entries.iter().map(|x| (x.inode.0, &x.digest)).collect())
        .collect();
    master
        .entries
        .iter()
        .filter(|e| others.iter().any(|o| !o.contains(&(e.inode.0, &e.digest))))
        .map(|e| e.inode)
        .collect()
}

impl<S: DcdbStore> Application for Dcdb<S> {
    fn deliver(
        &mut self,
        ctx: &mut DeliverCtx,
        subtype: u16,
        time: u32,
        payload: &[u8],
    ) -> Result<i32, AppError> {
        let res = self.deliver_op(ctx, subtype, time, payload);
        if self.store.failed() {
            return Err(AppError::permanent("the database failed"));
        }
        res
    }

    fn get_state(&mut self) -> Result<Vec<u8>, AppError> {
        Ok(self.store.index())
    }

    fn process_state_update(
        &mut self,
        sync: &mut SyncInfo,
        out: &mut Updates,
    ) -> Result<(), AppError> {
        let mut idx = Vec::with_capacity(sync.nodes.len());
        for n in &sync.nodes {
            let state = n.state.as_deref().unwrap_or_default();
            let i = MemdbIndex::decode(state)
                .map_err(|e| AppError::leave(format!("received malformed memdb index: {e}")))?;
            idx.push(i);
        }
        let leader = select_leader(&idx);
        let leader_state = sync.nodes[leader].state.clone();
        tracing::info!(
            "leader is {}/{}",
            sync.nodes[leader].member.nodeid,
            sync.nodes[leader].member.pid
        );
        for n in &mut sync.nodes {
            n.synced = n.state == leader_state;
        }
        self.master = leader_state;
        if sync.local == Some(leader) {
            let others: Vec<&MemdbIndex> = sync
                .nodes
                .iter()
                .zip(&idx)
                .filter(|(n, _)| !n.synced)
                .map(|(_, i)| i)
                .collect();
            let inodes = differing(&idx[leader], &others);
            tracing::info!("start sending inode updates");
            for inode in &inodes {
                let entry = self.store.entry(*inode).ok_or_else(|| {
                    AppError::leave(format!("can't get inode data for inode {:016X}", inode.0))
                })?;
                let payload = entry
                    .encode()
                    .map_err(|e| AppError::leave(format!("update of inode {}: {e}", inode.0)))?;
                out.update(payload);
            }
            tracing::info!("sent all ({}) updates", inodes.len());
            // also when nothing differs: the synced members deliver their
            // queued messages on it
            out.complete();
        }
        Ok(())
    }

    fn process_update(
        &mut self,
        _sync: &SyncInfo,
        _from: crate::machine::Member,
        update: &[u8],
    ) -> Result<(), AppError> {
        let e = TreeEntry::decode(update)
            .map_err(|e| AppError::leave(format!("bad update message: {e}")))?;
        self.updates.push(e);
        Ok(())
    }

    fn commit(&mut self, _sync: &SyncInfo) -> Result<(), AppError> {
        let master = self
            .master
            .as_deref()
            .ok_or_else(|| AppError::leave("commit without the leader's index"))?;
        tracing::info!(
            "update complete - trying to commit (got {} inode updates)",
            self.updates.len()
        );
        self.store
            .commit_sync(master, &self.updates)
            .map_err(|e| AppError::leave(format!("resync failed: {e}")))?;
        self.store.corosync_conf_changed(false);
        Ok(())
    }

    fn cleanup(&mut self) {
        self.master = None;
        self.updates.clear();
    }

    fn checksum(&mut self) -> Option<Result<[u8; CSUM_SIZE], AppError>> {
        Some(Ok(self.store.checksum()))
    }
}

impl<S: DcdbStore> Dcdb<S> {
    fn deliver_op(
        &mut self,
        ctx: &mut DeliverCtx,
        subtype: u16,
        time: u32,
        payload: &[u8],
    ) -> Result<i32, AppError> {
        let Some(ty) = DcdbMessageType::from_u16(subtype) else {
            return Err(AppError::leave(format!(
                "received unknown message type (msg_type == {subtype})"
            )));
        };
        if !self.store.quorate() {
            return Err(AppError::leave(
                "received write while not quorate - trigger resync",
            ));
        }
        let op = decode_operation(subtype, payload)
            .map_err(|e| AppError::leave(format!("bad {ty:?} message: {e}")))?;
        let writer = ctx.from.nodeid;
        match &op {
            Operation::UnlockRequest { path, csum } | Operation::Unlock { path, csum } => {
                if !self.store.lock_matches(path, csum) {
                    return Ok(0);
                }
                if let Operation::Unlock { .. } = op {
                    let del = Operation::Delete { path: path.clone() };
                    return Ok(errno_result(self.store.apply(&del, writer, time)));
                }
                if ctx.lowest && self.store.lock_expired(path, csum) {
                    let unlock = Operation::Unlock {
                        path: path.clone(),
                        csum: *csum,
                    };
                    if let Ok((sub, p)) = operation_message(&unlock) {
                        ctx.send(sub, p);
                    }
                }
                Ok(0)
            }
            _ => {
                let res = self.store.apply(&op, writer, time);
                let conf = match &op {
                    Operation::Write { path, .. } | Operation::Create { path } => {
                        path == "corosync.conf"
                    }
                    Operation::Rename { to, .. } => to == "corosync.conf",
                    _ => false,
                };
                if conf && res.is_ok() {
                    self.store.corosync_conf_changed(ctx.local);
                }
                Ok(errno_result(res))
            }
        }
    }
}

/// C's message result: the count (bytes written) or -errno.
fn errno_result(r: Result<usize, Errno>) -> i32 {
    match r {
        Ok(n) => i32::try_from(n).unwrap_or(i32::MAX),
        Err(e) => -e.0,
    }
}

/// The errno a FUSE caller gets from a message result.
pub fn result_errno(result: i32) -> Result<usize, Errno> {
    if result < 0 {
        Err(Errno(-result))
    } else {
        Ok(result as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcdb::IndexEntry;

    fn index(entries: &[(u64, u8)]) -> MemdbIndex {
        MemdbIndex {
            version: 1,
            last_inode: 0,
            writer: 0,
            mtime: 0,
            entries: entries
                .iter()
                .map(|&(i, d)| IndexEntry {
                    inode: Inode(i),
                    digest: [d; 32],
                })
                .collect(),
        }
    }

    #[test]
    fn differing_lists_missing_and_changed_entries_in_leader_order() {
        let master = index(&[(0, 1), (5, 2), (3, 3), (9, 4)]);
        let same = index(&[(9, 4), (3, 3), (5, 2), (0, 1)]);
        let stale = index(&[(0, 1), (5, 7), (9, 4), (11, 1)]);
        assert!(differing(&master, &[&same]).is_empty());
        assert_eq!(
            differing(&master, &[&same, &stale]),
            vec![Inode(5), Inode(3)]
        );
        assert_eq!(differing(&master, &[]), Vec::<Inode>::new());
    }
}
