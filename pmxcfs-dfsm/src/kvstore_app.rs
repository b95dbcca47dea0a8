//! The `pve_kvstore_v1` application (status.c): status keys and cluster
//! log entries of every node, and the cluster log merged at each sync. It
//! reaches the status and the log only through [`KvStoreSink`].

use pmxcfs_api_types::{Errno, NodeId};

use crate::kvstore::KvMessage;
use crate::machine::{AppError, Application, DeliverCtx, Member, SyncInfo, Updates};

/// `KVSTORE_CPG_GROUP_NAME` (joined with its trailing NUL by the service).
pub const KVSTORE_GROUP: &str = "pve_kvstore_v1";
/// The kvstore protocol version (status.c: 0).
pub const KVSTORE_PROTOCOL_VERSION: u32 = 0;

/// What the kvstore application needs from the status and the log.
pub trait KvStoreSink {
    /// A status key of another node (`cfs_kvstore_node_set`).
    fn node_set(&mut self, nodeid: NodeId, key: &str, value: &[u8]);
    /// A cluster log entry of another node, raw `clog_entry_t` bytes.
    fn log_entry(&mut self, raw: &[u8]);
    /// This node's cluster log in the C layout (the kvstore state).
    fn log_state(&mut self) -> Vec<u8>;
    /// Merge the logs of all members (`clusterlog_merge`): `states` in
    /// member order, `local` this node's index.
    fn merge_logs(&mut self, states: &[Option<Vec<u8>>], local: usize);
    /// The group's members changed (C: the node online flags).
    fn members(&mut self, members: &[Member]);
}

pub struct KvStore<S> {
    pub sink: S,
}

impl<S: KvStoreSink> Application for KvStore<S> {
    fn deliver(
        &mut self,
        ctx: &mut DeliverCtx,
        subtype: u16,
        _time: u32,
        payload: &[u8],
    ) -> Result<i32, AppError> {
        if ctx.local {
            return Ok(0); // our own messages are ours already
        }
        match KvMessage::decode(subtype, payload) {
            Ok(KvMessage::Update { key, value }) => {
                self.sink.node_set(ctx.from.nodeid, &key, &value);
                Ok(0)
            }
            Ok(KvMessage::Log { entry }) => {
                self.sink.log_entry(&entry);
                Ok(0)
            }
            Err(e) => {
                tracing::error!("kvstore message from node {}: {e}", ctx.from.nodeid);
                Ok(-Errno::EACCES.0)
            }
        }
    }

    fn confchg(&mut self, members: &[Member]) {
        self.sink.members(members);
    }

    fn get_state(&mut self) -> Result<Vec<u8>, AppError> {
        Ok(self.sink.log_state())
    }

    fn process_state_update(
        &mut self,
        sync: &mut SyncInfo,
        _out: &mut Updates,
    ) -> Result<(), AppError> {
        for n in &mut sync.nodes {
            n.synced = true;
        }
        let states: Vec<Option<Vec<u8>>> = sync.nodes.iter().map(|n| n.state.clone()).collect();
        self.sink.merge_logs(&states, sync.local.unwrap_or(0));
        Ok(())
    }

    fn process_update(
        &mut self,
        _sync: &SyncInfo,
        _from: Member,
        _update: &[u8],
    ) -> Result<(), AppError> {
        Err(AppError::leave(
            "kvstore: received unexpected update message",
        ))
    }

    fn commit(&mut self, _sync: &SyncInfo) -> Result<(), AppError> {
        Ok(())
    }
}

/// The NORMAL message of a status key: (subtype, payload).
pub fn update_message(key: &str, value: &[u8]) -> Option<(u16, Vec<u8>)> {
    let msg = KvMessage::Update {
        key: key.to_string(),
        value: value.to_vec(),
    };
    let mut out = Vec::new();
    let ty = msg.encode_into(&mut out).ok()?;
    Some((ty as u16, out))
}

/// The NORMAL message of a cluster log entry (raw `clog_entry_t`).
pub fn log_message(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let msg = KvMessage::Log {
        entry: raw.to_vec(),
    };
    let mut out = Vec::new();
    let ty = msg.encode_into(&mut out).ok()?;
    Some((ty as u16, out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{all, Fingerprint, Net};
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Sink {
        kv: BTreeMap<(u32, String), Vec<u8>>,
        log: Vec<Vec<u8>>,
        online: Vec<u32>,
    }

    impl KvStoreSink for Sink {
        fn node_set(&mut self, nodeid: NodeId, key: &str, value: &[u8]) {
            self.kv.insert((nodeid.0, key.into()), value.to_vec());
        }
        fn log_entry(&mut self, raw: &[u8]) {
            self.log.push(raw.to_vec());
        }
        fn log_state(&mut self) -> Vec<u8> {
            b"state".to_vec()
        }
        fn merge_logs(&mut self, states: &[Option<Vec<u8>>], _local: usize) {
            assert!(states.iter().all(|s| s.is_some()));
        }
        fn members(&mut self, members: &[Member]) {
            self.online = members.iter().map(|m| m.nodeid.0).collect();
        }
    }

    impl Fingerprint for KvStore<Sink> {
        fn fingerprint(&self) -> Vec<u8> {
            format!("{:?}", self.sink.online).into_bytes()
        }
    }

    #[test]
    fn updates_and_logs_of_other_nodes_arrive_own_are_skipped() {
        let mut net = Net::new_with(3, KVSTORE_PROTOCOL_VERSION, |_| KvStore {
            sink: Sink::default(),
        });
        net.confchg(all(3), true);
        net.settle();
        net.check_converged("synced without updates");
        let (sub, p) = update_message("nodeip", b"10.0.0.1\0").unwrap();
        net.submit_msg(0, sub, &p);
        let (sub, p) = log_message(b"raw-entry").unwrap();
        net.submit_msg(1, sub, &p);
        net.settle();
        assert!(net.procs[0].app.sink.kv.is_empty(), "own update skipped");
        assert_eq!(
            net.procs[2].app.sink.kv.get(&(1, "nodeip".into())),
            Some(&b"10.0.0.1\0".to_vec())
        );
        assert_eq!(net.procs[0].app.sink.log, vec![b"raw-entry".to_vec()]);
        assert!(net.procs[1].app.sink.log.is_empty());
        assert_eq!(net.procs[2].app.sink.online, vec![1, 2, 3]);
    }
}
