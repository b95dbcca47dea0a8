//! The payloads of the `pve_kvstore_v1` group (C `status.c`).
//!
//! NORMAL subtypes (`kvstore_message_t`):
//!
//! - UPDATE 1 (`kvstore_send_update_message`): `char key[256]` (the key,
//!   NUL-terminated, cut to 255 bytes by `g_strlcpy`) followed by the value
//!   (any length, possibly 0). C's receiver (`kvstore_parse_update_message`)
//!   wants at least 256 bytes and a NUL within the first 256; the key is the
//!   C string before it, the value everything after byte 256. The sender
//!   does not clear the bytes after the key's NUL (a stack buffer), so they
//!   are not compared or kept; we send zeros.
//! - UPDATE_COMPLETE 2: defined, never sent; C's `dfsm_deliver` treats it
//!   as an unknown type (answer -EACCES, stays in the group).
//! - LOG 3 (`cfs_cluster_log`): one raw `clog_entry_t` of
//!   `clog_entry_size` bytes (`sizeof(clog_entry_t)` 48 + node_len +
//!   ident_len + tag_len + msg_len; the strings start at offset 44). It is
//!   kept as bytes here: `pmxcfs_logger::ClogEntry::decode` checks it as
//!   `kvstore_parse_log_message` does, and is its one decoder.
//!
//! The group's STATE payload is the node's cluster log buffer
//! (`clusterlog_get_state`: `clog_base_t {u32 size, u32 cpos, data}`,
//! sorted); `pmxcfs_logger::ClogBuffer::from_bytes` applies C's check
//! (longer than 8 bytes and exactly `size` bytes). The group sends no
//! UPDATE messages (C leaves the group if it receives one) and no VERIFY
//! checksum (it has no checksum callback).
//!
//! C ignores kvstore messages that the node sent itself, and on a parse
//! error logs and goes on (the message is dropped, the group is not left).

use crate::bytes::Reader;

/// CPG group name, with the trailing NUL that C counts in its length.
pub const KVSTORE_CPG_GROUP_NAME: &[u8] = b"pve_kvstore_v1\0";
/// Protocol version of the kvstore group.
pub const KVSTORE_PROTOCOL_VERSION: u32 = 0;
/// Size of the key field of UPDATE.
pub const KV_KEY_SIZE: usize = 256;

/// `kvstore_message_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum KvMessageType {
    Update = 1,
    /// Defined in C, never sent nor accepted.
    UpdateComplete = 2,
    Log = 3,
}

impl KvMessageType {
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Update,
            2 => Self::UpdateComplete,
            3 => Self::Log,
            _ => return None,
        })
    }
}

/// A decoded kvstore NORMAL message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvMessage {
    /// A status key of the sender (`rrd/...`, `nodeip`, or a kv entry).
    Update { key: String, value: Vec<u8> },
    /// One cluster log entry in the C layout (see the module doc).
    Log { entry: Vec<u8> },
}

impl KvMessage {
    pub fn msg_type(&self) -> KvMessageType {
        match self {
            KvMessage::Update { .. } => KvMessageType::Update,
            KvMessage::Log { .. } => KvMessageType::Log,
        }
    }

    /// Decodes the payload of a NORMAL message of subtype `msg_type`.
    /// Never panics.
    pub fn decode(msg_type: u16, payload: &[u8]) -> Result<KvMessage, KvError> {
        match KvMessageType::from_u16(msg_type) {
            Some(KvMessageType::Update) => {
                let mut r = Reader::new(payload);
                let key_field = r.take(KV_KEY_SIZE).ok_or(KvError::Truncated {
                    need: KV_KEY_SIZE,
                    got: payload.len(),
                })?;
                let key_len = key_field
                    .iter()
                    .position(|&b| b == 0)
                    .ok_or(KvError::UnterminatedKey)?;
                let key = std::str::from_utf8(&key_field[..key_len])
                    .map_err(|_| KvError::KeyNotUtf8)?
                    .to_owned();
                Ok(KvMessage::Update {
                    key,
                    value: r.rest().to_vec(),
                })
            }
            Some(KvMessageType::Log) => Ok(KvMessage::Log {
                entry: payload.to_vec(),
            }),
            Some(KvMessageType::UpdateComplete) | None => Err(KvError::UnknownType(msg_type)),
        }
    }

    /// Appends the payload as C builds it and returns the NORMAL subtype.
    /// A key must be shorter than 256 bytes and free of NUL bytes (C would
    /// cut it silently).
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<KvMessageType, KvError> {
        match self {
            KvMessage::Update { key, value } => {
                let k = key.as_bytes();
                if k.contains(&0) {
                    return Err(KvError::KeyHasNul);
                }
                if k.len() >= KV_KEY_SIZE {
                    return Err(KvError::KeyTooLong(k.len()));
                }
                out.reserve(KV_KEY_SIZE + value.len());
                out.extend_from_slice(k);
                out.resize(out.len() + KV_KEY_SIZE - k.len(), 0);
                out.extend_from_slice(value);
            }
            KvMessage::Log { entry } => out.extend_from_slice(entry),
        }
        Ok(self.msg_type())
    }
}

/// A kvstore payload that could not be decoded or encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// Not UPDATE or LOG (C: "received unknown message type", answers
    /// -EACCES, stays in the group).
    #[error("unknown kvstore message type {0}")]
    UnknownType(u16),
    #[error("short kvstore message ({got} bytes < {need})")]
    Truncated { need: usize, got: usize },
    #[error("kvstore key not NUL-terminated within 256 bytes")]
    UnterminatedKey,
    #[error("kvstore key is not UTF-8")]
    KeyNotUtf8,
    #[error("kvstore key of {0} bytes (at most 255)")]
    KeyTooLong(usize),
    #[error("kvstore key contains a NUL byte")]
    KeyHasNul,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bytes::test_util::{hex, Rng};

    /// kvstore_send_update_message("nodeip", "10.0.0.1\0", 9) as printed by
    /// a throwaway C program (outside the repository) that gathers the same
    /// two iovecs (`char name[256]` after g_strlcpy, then the data); the
    /// name buffer was zeroed first (C leaves the stack bytes after the NUL
    /// as they were). 265 bytes.
    fn update_vector() -> Vec<u8> {
        let mut v = hex("6e 6f 64 65 69 70 00");
        v.resize(256, 0);
        v.extend_from_slice(&hex("31 30 2e 30 2e 30 2e 31 00"));
        v
    }

    #[test]
    fn c_update_vector_decodes_and_encodes() {
        let bytes = update_vector();
        assert_eq!(bytes.len(), 265);
        let msg = KvMessage::Update {
            key: "nodeip".into(),
            value: b"10.0.0.1\0".to_vec(),
        };
        assert_eq!(KvMessage::decode(1, &bytes).as_ref(), Ok(&msg));
        let mut out = vec![];
        assert_eq!(msg.encode_into(&mut out), Ok(KvMessageType::Update));
        assert_eq!(out, bytes);
    }

    #[test]
    fn garbage_after_the_key_is_ignored_as_c() {
        let mut bytes = update_vector();
        for b in &mut bytes[7..256] {
            *b = 0xee;
        }
        assert_eq!(
            KvMessage::decode(1, &bytes),
            Ok(KvMessage::Update {
                key: "nodeip".into(),
                value: b"10.0.0.1\0".to_vec()
            })
        );
    }

    #[test]
    fn truncated_key_field_is_refused() {
        // Every prefix that cuts into the 256-byte key field is refused; a
        // prefix that only shortens the value is a shorter value (the
        // value's length is the message's end, in C too).
        let bytes = update_vector();
        for n in 0..KV_KEY_SIZE {
            assert!(KvMessage::decode(1, &bytes[..n]).is_err(), "prefix {n}");
        }
        assert_eq!(
            KvMessage::decode(1, &bytes[..256]),
            Ok(KvMessage::Update {
                key: "nodeip".into(),
                value: vec![]
            })
        );
    }

    #[test]
    fn malformed_and_unknown() {
        assert_eq!(
            KvMessage::decode(1, &[b'a'; 300]),
            Err(KvError::UnterminatedKey)
        );
        let mut k = vec![0xff, 0];
        k.resize(256, 0);
        assert_eq!(KvMessage::decode(1, &k), Err(KvError::KeyNotUtf8));
        assert_eq!(KvMessage::decode(2, &[]), Err(KvError::UnknownType(2)));
        assert_eq!(KvMessage::decode(0, &[]), Err(KvError::UnknownType(0)));
        assert_eq!(KvMessage::decode(4, &[]), Err(KvError::UnknownType(4)));
        let long = KvMessage::Update {
            key: "k".repeat(256),
            value: vec![],
        };
        assert_eq!(long.encode_into(&mut vec![]), Err(KvError::KeyTooLong(256)));
        let ok = KvMessage::Update {
            key: "k".repeat(255),
            value: vec![],
        };
        let mut out = vec![];
        ok.encode_into(&mut out).unwrap();
        assert_eq!(KvMessage::decode(1, &out), Ok(ok));
    }

    #[test]
    fn log_is_kept_verbatim() {
        let entry: Vec<u8> = (0..60).collect();
        let m = KvMessage::decode(3, &entry).unwrap();
        assert_eq!(
            m,
            KvMessage::Log {
                entry: entry.clone()
            }
        );
        let mut out = vec![];
        assert_eq!(m.encode_into(&mut out), Ok(KvMessageType::Log));
        assert_eq!(out, entry);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng::new(0x5eed_0004);
        let base = update_vector();
        for i in 0..20_000 {
            let input = if i % 2 == 0 {
                rng.bytes(300)
            } else {
                rng.mutate(&base)
            };
            let ty = rng.below(5) as u16;
            if let Ok(m) = KvMessage::decode(ty, &input) {
                let mut out = vec![];
                let t = m.encode_into(&mut out).expect("re-encodes");
                assert_eq!(KvMessage::decode(t as u16, &out), Ok(m));
            }
        }
    }
}
