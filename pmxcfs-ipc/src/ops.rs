//! What each request does (server.c `s1_msg_process_fn`): the access
//! checks in the C order, the database ops (6, 11, 12, 13) done here, the
//! status ops handed to a [`StatusOps`].

use std::sync::Arc;

use pmxcfs_api_types::Errno;
use pmxcfs_memdb::MemDb;

use crate::auth::{is_private_path, Access, Credentials};
use crate::guestconf::{guest_config_properties, vm_exists};
use crate::request::{parse_request, OpId, Request};
use crate::wire::{RequestHeader, MSG_DISCONNECT, REQUEST_HEADER_SIZE};

/// Number of cluster log entries when the request asks for 0.
pub const DEFAULT_CLUSTER_LOG_ENTRIES: u32 = 50;

/// Path of the API token file checked by VERIFY_TOKEN.
pub const TOKEN_CFG: &str = "priv/token.cfg";

/// One LOG_CLUSTER_MSG entry. Strings are the bytes the client sent,
/// without NUL, unvalidated (the cluster log turns them into ASCII).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterLogMessage<'a> {
    /// pid of the client process (from the socket credentials).
    pub pid: u32,
    /// syslog priority; the cluster log drops entries with priority >= 8.
    pub priority: u8,
    pub ident: &'a [u8],
    pub tag: &'a [u8],
    pub msg: &'a [u8],
}

/// The status data the IPC ops need (status.c). Implemented by the status
/// layer; every method is called on a tokio worker and must not block for
/// long.
pub trait StatusOps: Send + Sync + 'static {
    /// `.version` (op 1, `cfs_create_version_msg`).
    fn fs_version(&self) -> Vec<u8>;
    /// `.members` (op 2, `cfs_create_memberlist_msg`).
    fn cluster_info(&self) -> Vec<u8>;
    /// `.vmlist` (op 3, `cfs_create_vmlist_msg`).
    fn guest_list(&self) -> Vec<u8>;
    /// SET_STATUS of this node (op 4, `cfs_status_set`): `rrd/<key>`,
    /// `nodeip` or a kv key; EFBIG over 32 KiB, ENOMEM for malformed RRD or
    /// IP data.
    fn set_status(&self, name: &str, data: &[u8]) -> Result<(), Errno>;
    /// GET_STATUS (op 5, `cfs_create_status_msg`); `node` "" is this node.
    /// ENOENT if missing.
    fn get_status(&self, name: &str, node: &str) -> Result<Vec<u8>, Errno>;
    /// LOG_CLUSTER_MSG (op 7): add an entry from this node. An entry that
    /// is dropped (priority >= 8) is still a success in C.
    fn log_cluster_msg(&self, msg: &ClusterLogMessage<'_>) -> Result<(), Errno>;
    /// GET_CLUSTER_LOG (op 8): at most `max_entries` (>= 1) entries as JSON,
    /// only those whose ident is `user` unless `user` is empty.
    fn cluster_log(&self, max_entries: u32, user: &[u8]) -> Vec<u8>;
    /// GET_RRD_DUMP (op 10, `cfs_rrd_dump`), sent as is.
    fn rrd_dump(&self) -> Vec<u8>;
    /// Before GET_CONFIG reads `path` from memdb: a change of that file the
    /// daemon answered but has not applied yet is waited for (cluster
    /// mode's open(O_TRUNC)).
    fn before_config_read(&self, path: &str) {
        let _ = path;
    }
    /// The same before a request that reads several files (guest config
    /// properties, VERIFY_TOKEN): any such change is waited for.
    fn before_any_config_read(&self) {}
}

/// A connected client as the ops see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Client {
    pub cred: Credentials,
    pub access: Access,
}

/// What to do with one received message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Send a response with this id: the payload, or a negative errno.
    Reply {
        id: i32,
        result: Result<Vec<u8>, i32>,
    },
    /// `QB_IPC_MSG_DISCONNECT`: close the connection.
    Disconnect,
}

/// Executes requests against the database and the status.
pub struct Handler {
    memdb: Arc<MemDb>,
    status: Arc<dyn StatusOps>,
}

impl Handler {
    pub fn new(memdb: Arc<MemDb>, status: Arc<dyn StatusOps>) -> Self {
        Handler { memdb, status }
    }

    /// Handle one whole message as received (header included).
    pub fn handle_message(&self, client: &Client, msg: &[u8]) -> Outcome {
        if msg.is_empty() {
            // libqb takes an empty message as a disconnect request.
            return Outcome::Disconnect;
        }
        let Some(hdr) = RequestHeader::parse(msg) else {
            // Too short for a header: answer with whatever id is there.
            let id = msg
                .get(..4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .unwrap_or(0);
            return Outcome::Reply {
                id,
                result: Err(-Errno::EINVAL.0),
            };
        };
        if hdr.id == MSG_DISCONNECT {
            return Outcome::Disconnect;
        }
        let result = self.handle_request(client, hdr, msg).map_err(|e| -e.0);
        Outcome::Reply { id: hdr.id, result }
    }

    fn handle_request(
        &self,
        client: &Client,
        hdr: RequestHeader,
        msg: &[u8],
    ) -> Result<Vec<u8>, Errno> {
        let op = OpId::from_i32(hdr.id).ok_or(Errno::ECHRNG)?;
        let read_only = client.access == Access::ReadOnly;
        if read_only && op.is_write() {
            return Err(Errno::EPERM);
        }
        // The payload ends where the header says; a size below the header
        // or beyond the received bytes is invalid (C would read past the
        // message).
        let end = usize::try_from(hdr.size).map_err(|_| Errno::EINVAL)?;
        if end < REQUEST_HEADER_SIZE || end > msg.len() {
            return Err(Errno::EINVAL);
        }
        let request = parse_request(hdr.id, &msg[REQUEST_HEADER_SIZE..end])?;
        self.execute(client, request)
    }

    /// Execute a decoded request.
    pub fn execute(&self, client: &Client, request: Request<'_>) -> Result<Vec<u8>, Errno> {
        let read_only = client.access == Access::ReadOnly;
        match request {
            Request::GetFsVersion => Ok(self.status.fs_version()),
            Request::GetClusterInfo => Ok(self.status.cluster_info()),
            Request::GetGuestList => Ok(self.status.guest_list()),
            Request::SetStatus { name, data } => {
                if read_only {
                    return Err(Errno::EPERM);
                }
                let name = std::str::from_utf8(name).map_err(|_| Errno::EINVAL)?;
                self.status.set_status(name, data)?;
                Ok(Vec::new())
            }
            Request::GetStatus { name, node } => {
                // Keys and node names are UTF-8: anything else is not there.
                let name = std::str::from_utf8(name).map_err(|_| Errno::ENOENT)?;
                let node = std::str::from_utf8(node).map_err(|_| Errno::ENOENT)?;
                self.status.get_status(name, node)
            }
            Request::GetConfig { path } => {
                if read_only && is_private_path(path) {
                    return Err(Errno::EPERM);
                }
                let path = std::str::from_utf8(path).map_err(|_| Errno::ENOENT)?;
                self.status.before_config_read(path);
                self.memdb.read(path).ok_or(Errno::ENOENT)
            }
            Request::LogClusterMsg {
                priority,
                ident,
                tag,
                msg,
            } => {
                if read_only {
                    return Err(Errno::EPERM);
                }
                self.status.log_cluster_msg(&ClusterLogMessage {
                    pid: client.cred.pid,
                    priority,
                    ident,
                    tag,
                    msg,
                })?;
                Ok(Vec::new())
            }
            Request::GetClusterLog { max_entries, user } => {
                let max = if max_entries == 0 {
                    DEFAULT_CLUSTER_LOG_ENTRIES
                } else {
                    max_entries
                };
                Ok(self.status.cluster_log(max, user))
            }
            Request::GetRrdDump => Ok(self.status.rrd_dump()),
            Request::GetGuestConfigProperty { guests, property } => {
                self.status.before_any_config_read();
                guest_config_properties(&self.memdb, guests, &[property])
            }
            Request::GetGuestConfigProperties { guests, properties } => {
                self.status.before_any_config_read();
                guest_config_properties(&self.memdb, guests, &properties)
            }
            Request::GuestConfigMalformed { vmid, errno } => {
                if vm_exists(&self.memdb, vmid) {
                    Err(errno)
                } else {
                    Err(Errno::ENOENT)
                }
            }
            Request::VerifyToken { token } => {
                self.status.before_any_config_read();
                self.verify_token(token)
            }
        }
    }

    /// VERIFY_TOKEN: a whole line of `priv/token.cfg` equals the token.
    fn verify_token(&self, token: &[u8]) -> Result<Vec<u8>, Errno> {
        let cfg = self.memdb.read(TOKEN_CFG).unwrap_or_default();
        if cfg.len() >= token.len() && cfg.split(|&b| b == b'\n').any(|line| line == token) {
            Ok(Vec::new())
        } else {
            Err(Errno::ENOENT)
        }
    }
}

#[cfg(test)]
#[path = "ops_tests.rs"]
mod tests;
