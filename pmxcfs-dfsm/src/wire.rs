//! The DFSM message header and the DFSM messages (C `dfsm.c`).
//!
//! Every CPG message of both DFSM groups starts with the 16-byte base header
//! (`dfsm_message_header_t`, all fields little-endian as on x86_64):
//!
//! ```text
//! offset size field
//!      0    2 type              DfsmMessageType (NORMAL 0 .. VERIFY 6)
//!      2    2 subtype           NORMAL: the application's message type
//!                               (dcdb / kvstore); 0 in state messages
//!      4    4 protocol_version  of the sending group (dcdb 1, kvstore 0)
//!      8    4 time              time(NULL) of the sender
//!     12    4 reserved          0
//! ```
//!
//! NORMAL (`dfsm_message_normal_header_t`, 24 bytes): base + `u64 count`
//! at offset 16 (no padding: the base ends on an 8-byte boundary), then the
//! application payload.
//!
//! All other types (`dfsm_message_state_header_t`, 32 bytes): base + the
//! sync epoch `{u32 epoch, u32 time, u32 nodeid, u32 pid}` at offset 16,
//! then:
//!
//! - SYNC_START 1, UPDATE_COMPLETE 4: nothing (C ignores any extra bytes);
//! - STATE 2: the application's state (dcdb: the memdb index, kvstore: the
//!   cluster log buffer);
//! - UPDATE 3: one application update (dcdb: one tree entry);
//! - VERIFY_REQUEST 5: `u64 csum_id`, exactly (40 bytes in all);
//! - VERIFY 6: `u64 csum_id` + the 32-byte checksum, exactly (72 bytes).
//!
//! Note that VERIFY_REQUEST and VERIFY carry the epoch too: C sends them
//! with `dfsm_send_state_message_full` and compares the epoch of VERIFY
//! with the one saved from the VERIFY_REQUEST.
//!
//! The checks and their order follow `dfsm_cpg_deliver_callback`: fewer than
//! 16 bytes is a short message; then C looks at the protocol version (a
//! higher one switches to the permanent version-error mode, a lower one makes
//! it drop the message) *before* checking the length of the longer headers.
//! Decoding is pure, so the version stays data: every [`Frame`] and every
//! error after the base header carries the protocol version, and the caller
//! applies [`check_protocol_version`] first, as C does.

use pmxcfs_api_types::NodeId;

use crate::bytes::Reader;

/// `sizeof(dfsm_message_header_t)`.
pub const BASE_HEADER_SIZE: usize = 16;
/// `sizeof(dfsm_message_normal_header_t)`.
pub const NORMAL_HEADER_SIZE: usize = 24;
/// `sizeof(dfsm_message_state_header_t)`.
pub const STATE_HEADER_SIZE: usize = 32;
/// `sizeof(dfsm_sync_epoch_t)`.
pub const EPOCH_SIZE: usize = 16;
/// Size of the data checksum in VERIFY (`dfsm->csum`, SHA-256).
pub const CSUM_SIZE: usize = 32;
/// VERIFY_REQUEST payload: `u64 csum_id`.
pub const VERIFY_REQUEST_PAYLOAD_SIZE: usize = 8;
/// VERIFY payload: `u64 csum_id` + checksum.
pub const VERIFY_PAYLOAD_SIZE: usize = 8 + CSUM_SIZE;

/// `DFSM_MESSAGE_*` (dfsm.c).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum DfsmMessageType {
    Normal = 0,
    SyncStart = 1,
    State = 2,
    Update = 3,
    UpdateComplete = 4,
    VerifyRequest = 5,
    Verify = 6,
}

impl DfsmMessageType {
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            0 => Self::Normal,
            1 => Self::SyncStart,
            2 => Self::State,
            3 => Self::Update,
            4 => Self::UpdateComplete,
            5 => Self::VerifyRequest,
            6 => Self::Verify,
            _ => return None,
        })
    }
}

/// `dfsm_sync_epoch_t`: identifies one synchronisation round. Created by
/// every member at each configuration change (`epoch` is a per-process
/// counter); the one in the lowest node's SYNC_START is adopted by all.
/// C compares epochs with `memcmp`, so all four fields count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SyncEpoch {
    pub epoch: u32,
    pub time: u32,
    pub nodeid: NodeId,
    pub pid: u32,
}

impl SyncEpoch {
    pub fn encode(&self) -> [u8; EPOCH_SIZE] {
        let mut out = [0u8; EPOCH_SIZE];
        out[0..4].copy_from_slice(&self.epoch.to_le_bytes());
        out[4..8].copy_from_slice(&self.time.to_le_bytes());
        out[8..12].copy_from_slice(&self.nodeid.0.to_le_bytes());
        out[12..16].copy_from_slice(&self.pid.to_le_bytes());
        out
    }

    fn read(r: &mut Reader<'_>) -> Option<SyncEpoch> {
        Some(SyncEpoch {
            epoch: r.u32()?,
            time: r.u32()?,
            nodeid: NodeId(r.u32()?),
            pid: r.u32()?,
        })
    }
}

/// `dfsm_message_header_t` as received (any type value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseHeader {
    pub msg_type: u16,
    pub subtype: u16,
    pub protocol_version: u32,
    pub time: u32,
    pub reserved: u32,
}

impl BaseHeader {
    pub fn decode(buf: &[u8]) -> Result<BaseHeader, WireError> {
        let mut r = Reader::new(buf);
        Self::read(&mut r).ok_or(WireError::Short { len: buf.len() })
    }

    fn read(r: &mut Reader<'_>) -> Option<BaseHeader> {
        Some(BaseHeader {
            msg_type: r.u16()?,
            subtype: r.u16()?,
            protocol_version: r.u32()?,
            time: r.u32()?,
            reserved: r.u32()?,
        })
    }

    pub fn encode(&self) -> [u8; BASE_HEADER_SIZE] {
        let mut out = [0u8; BASE_HEADER_SIZE];
        out[0..2].copy_from_slice(&self.msg_type.to_le_bytes());
        out[2..4].copy_from_slice(&self.subtype.to_le_bytes());
        out[4..8].copy_from_slice(&self.protocol_version.to_le_bytes());
        out[8..12].copy_from_slice(&self.time.to_le_bytes());
        out[12..16].copy_from_slice(&self.reserved.to_le_bytes());
        out
    }
}

/// The header of a NORMAL message, as `dfsm_send_message_sync` builds it
/// (reserved 0). The payload follows it; for sending it without copying
/// the payload into one buffer.
pub fn normal_header(
    subtype: u16,
    count: u64,
    protocol_version: u32,
    time: u32,
) -> [u8; NORMAL_HEADER_SIZE] {
    let mut out = [0u8; NORMAL_HEADER_SIZE];
    let base = BaseHeader {
        msg_type: DfsmMessageType::Normal as u16,
        subtype,
        protocol_version,
        time,
        reserved: 0,
    };
    out[..BASE_HEADER_SIZE].copy_from_slice(&base.encode());
    out[BASE_HEADER_SIZE..].copy_from_slice(&count.to_le_bytes());
    out
}

/// The header of a state message, as `dfsm_send_state_message_full`
/// builds it (subtype 0, reserved 0). `msg_type` should not be NORMAL.
pub fn state_header(
    msg_type: DfsmMessageType,
    epoch: &SyncEpoch,
    protocol_version: u32,
    time: u32,
) -> [u8; STATE_HEADER_SIZE] {
    let mut out = [0u8; STATE_HEADER_SIZE];
    let base = BaseHeader {
        msg_type: msg_type as u16,
        subtype: 0,
        protocol_version,
        time,
        reserved: 0,
    };
    out[..BASE_HEADER_SIZE].copy_from_slice(&base.encode());
    out[BASE_HEADER_SIZE..].copy_from_slice(&epoch.encode());
    out
}

/// One DFSM message, without the fields every message has (see [`Frame`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DfsmMessage {
    /// An application message; `subtype` is its type (`DcdbMessageType`,
    /// `KvMessageType`), `count` the sender's message counter (the key of
    /// the sender's wait for its own delivery).
    Normal {
        subtype: u16,
        count: u64,
        payload: Vec<u8>,
    },
    SyncStart {
        epoch: SyncEpoch,
    },
    State {
        epoch: SyncEpoch,
        state: Vec<u8>,
    },
    Update {
        epoch: SyncEpoch,
        update: Vec<u8>,
    },
    UpdateComplete {
        epoch: SyncEpoch,
    },
    VerifyRequest {
        epoch: SyncEpoch,
        csum_id: u64,
    },
    Verify {
        epoch: SyncEpoch,
        csum_id: u64,
        csum: [u8; CSUM_SIZE],
    },
}

impl DfsmMessage {
    pub fn msg_type(&self) -> DfsmMessageType {
        match self {
            DfsmMessage::Normal { .. } => DfsmMessageType::Normal,
            DfsmMessage::SyncStart { .. } => DfsmMessageType::SyncStart,
            DfsmMessage::State { .. } => DfsmMessageType::State,
            DfsmMessage::Update { .. } => DfsmMessageType::Update,
            DfsmMessage::UpdateComplete { .. } => DfsmMessageType::UpdateComplete,
            DfsmMessage::VerifyRequest { .. } => DfsmMessageType::VerifyRequest,
            DfsmMessage::Verify { .. } => DfsmMessageType::Verify,
        }
    }

    /// The epoch of a state message; `None` for NORMAL.
    pub fn epoch(&self) -> Option<&SyncEpoch> {
        match self {
            DfsmMessage::Normal { .. } => None,
            DfsmMessage::SyncStart { epoch }
            | DfsmMessage::State { epoch, .. }
            | DfsmMessage::Update { epoch, .. }
            | DfsmMessage::UpdateComplete { epoch }
            | DfsmMessage::VerifyRequest { epoch, .. }
            | DfsmMessage::Verify { epoch, .. } => Some(epoch),
        }
    }

    /// Decodes one received message (the whole CPG message).
    pub fn decode(buf: &[u8]) -> Result<Frame, WireError> {
        Frame::decode(buf)
    }

    /// Encodes the message as C sends it (reserved 0, subtype 0 in state
    /// messages).
    pub fn encode(&self, protocol_version: u32, time: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        match self {
            DfsmMessage::Normal {
                subtype,
                count,
                payload,
            } => {
                out.extend_from_slice(&normal_header(*subtype, *count, protocol_version, time));
                out.extend_from_slice(payload);
            }
            other => {
                // Every non-NORMAL variant has an epoch.
                let epoch = other.epoch().copied().unwrap_or_default();
                out.extend_from_slice(&state_header(
                    other.msg_type(),
                    &epoch,
                    protocol_version,
                    time,
                ));
                match other {
                    DfsmMessage::State { state: data, .. }
                    | DfsmMessage::Update { update: data, .. } => out.extend_from_slice(data),
                    DfsmMessage::VerifyRequest { csum_id, .. } => {
                        out.extend_from_slice(&csum_id.to_le_bytes())
                    }
                    DfsmMessage::Verify { csum_id, csum, .. } => {
                        out.extend_from_slice(&csum_id.to_le_bytes());
                        out.extend_from_slice(csum);
                    }
                    _ => {}
                }
            }
        }
        out
    }

    /// Length of [`DfsmMessage::encode`]'s result.
    pub fn encoded_len(&self) -> usize {
        match self {
            DfsmMessage::Normal { payload, .. } => NORMAL_HEADER_SIZE + payload.len(),
            DfsmMessage::SyncStart { .. } | DfsmMessage::UpdateComplete { .. } => STATE_HEADER_SIZE,
            DfsmMessage::State { state: data, .. } | DfsmMessage::Update { update: data, .. } => {
                STATE_HEADER_SIZE + data.len()
            }
            DfsmMessage::VerifyRequest { .. } => STATE_HEADER_SIZE + VERIFY_REQUEST_PAYLOAD_SIZE,
            DfsmMessage::Verify { .. } => STATE_HEADER_SIZE + VERIFY_PAYLOAD_SIZE,
        }
    }
}

/// A decoded DFSM message with the header fields common to all messages.
/// The `reserved` field and the subtype of state messages are not kept
/// (C neither checks nor uses them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub protocol_version: u32,
    /// The sender's `time(NULL)`; for NORMAL messages it is the `msg_time`
    /// that dcdb uses as the mtime of the change.
    pub time: u32,
    pub message: DfsmMessage,
}

impl Frame {
    /// Decodes one received message. Never panics.
    pub fn decode(buf: &[u8]) -> Result<Frame, WireError> {
        let mut r = Reader::new(buf);
        let base = BaseHeader::read(&mut r).ok_or(WireError::Short { len: buf.len() })?;
        let truncated = |need: usize| WireError::Truncated {
            msg_type: base.msg_type,
            protocol_version: base.protocol_version,
            need,
            got: buf.len(),
        };
        let frame = |message| Frame {
            protocol_version: base.protocol_version,
            time: base.time,
            message,
        };

        if base.msg_type == DfsmMessageType::Normal as u16 {
            let count = r.u64().ok_or_else(|| truncated(NORMAL_HEADER_SIZE))?;
            return Ok(frame(DfsmMessage::Normal {
                subtype: base.subtype,
                count,
                payload: r.rest().to_vec(),
            }));
        }

        // C checks the state header length before looking at the type, so
        // an unknown type shorter than 32 bytes is a short message too.
        let epoch = SyncEpoch::read(&mut r).ok_or_else(|| truncated(STATE_HEADER_SIZE))?;
        let rest = r.rest();
        let bad_length = |expected: usize| WireError::BadLength {
            msg_type: base.msg_type,
            protocol_version: base.protocol_version,
            epoch,
            expected,
            got: rest.len(),
        };
        let message = match DfsmMessageType::from_u16(base.msg_type) {
            Some(DfsmMessageType::SyncStart) => DfsmMessage::SyncStart { epoch },
            Some(DfsmMessageType::State) => DfsmMessage::State {
                epoch,
                state: rest.to_vec(),
            },
            Some(DfsmMessageType::Update) => DfsmMessage::Update {
                epoch,
                update: rest.to_vec(),
            },
            Some(DfsmMessageType::UpdateComplete) => DfsmMessage::UpdateComplete { epoch },
            Some(DfsmMessageType::VerifyRequest) => {
                if rest.len() != VERIFY_REQUEST_PAYLOAD_SIZE {
                    return Err(bad_length(VERIFY_REQUEST_PAYLOAD_SIZE));
                }
                let csum_id = r.u64().ok_or_else(|| bad_length(8))?;
                DfsmMessage::VerifyRequest { epoch, csum_id }
            }
            Some(DfsmMessageType::Verify) => {
                if rest.len() != VERIFY_PAYLOAD_SIZE {
                    return Err(bad_length(VERIFY_PAYLOAD_SIZE));
                }
                let csum_id = r.u64().ok_or_else(|| bad_length(VERIFY_PAYLOAD_SIZE))?;
                let csum = r.array().ok_or_else(|| bad_length(VERIFY_PAYLOAD_SIZE))?;
                DfsmMessage::Verify {
                    epoch,
                    csum_id,
                    csum,
                }
            }
            Some(DfsmMessageType::Normal) | None => {
                return Err(WireError::UnknownType {
                    msg_type: base.msg_type,
                    protocol_version: base.protocol_version,
                    epoch,
                })
            }
        };
        Ok(frame(message))
    }

    pub fn encode(&self) -> Vec<u8> {
        self.message.encode(self.protocol_version, self.time)
    }
}

/// What a received protocol version means for the local group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolCheck {
    /// Same version: process the message.
    Same,
    /// The peer runs a newer protocol: C enters the permanent
    /// `DFSM_MODE_VERSION_ERROR` ("please update this node").
    Newer,
    /// The peer runs an older protocol: C drops the message.
    Older,
}

/// Compares a received protocol version with the local one.
pub fn check_protocol_version(received: u32, local: u32) -> ProtocolCheck {
    use std::cmp::Ordering;
    match received.cmp(&local) {
        Ordering::Equal => ProtocolCheck::Same,
        Ordering::Greater => ProtocolCheck::Newer,
        Ordering::Less => ProtocolCheck::Older,
    }
}

/// A DFSM message that could not be decoded. Past the base header every
/// variant keeps the protocol version (C checks it before the rest) and,
/// past the state header, the epoch (C drops state messages of another
/// epoch before it looks at their content).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Shorter than the base header ("received short message").
    #[error("short DFSM message ({len} bytes < 16)")]
    Short { len: usize },
    /// Shorter than the NORMAL (24) or state (32) header.
    #[error("short DFSM message (type {msg_type}, {got} bytes < {need})")]
    Truncated {
        msg_type: u16,
        protocol_version: u32,
        need: usize,
        got: usize,
    },
    /// VERIFY_REQUEST / VERIFY whose payload is not exactly 8 / 40 bytes.
    #[error("DFSM message type {msg_type} with {got} payload bytes (expected {expected})")]
    BadLength {
        msg_type: u16,
        protocol_version: u32,
        epoch: SyncEpoch,
        expected: usize,
        got: usize,
    },
    /// A type above 6 (with a complete state header). C ignores it when
    /// synced and leaves the group otherwise.
    #[error("unknown DFSM message type {msg_type}")]
    UnknownType {
        msg_type: u16,
        protocol_version: u32,
        epoch: SyncEpoch,
    },
}

impl WireError {
    /// The sender's protocol version, when the base header was complete.
    pub fn protocol_version(&self) -> Option<u32> {
        match self {
            WireError::Short { .. } => None,
            WireError::Truncated {
                protocol_version, ..
            }
            | WireError::BadLength {
                protocol_version, ..
            }
            | WireError::UnknownType {
                protocol_version, ..
            } => Some(*protocol_version),
        }
    }

    /// The epoch, when the state header was complete.
    pub fn epoch(&self) -> Option<&SyncEpoch> {
        match self {
            WireError::BadLength { epoch, .. } | WireError::UnknownType { epoch, .. } => {
                Some(epoch)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bytes::test_util::{hex, Rng};

    // Byte vectors printed by a throwaway C program (outside the
    // repository) that retypes the struct declarations of dfsm.c
    // (dfsm_message_header_t, dfsm_sync_epoch_t, dfsm_message_state_header_t,
    // dfsm_message_normal_header_t), fills them like dfsm_send_message_sync /
    // dfsm_send_state_message_full / dfsm_verify_request / dfsm_send_checksum
    // and dumps the gathered iovecs; gcc on x86_64. The same program printed
    // sizeof: base 16, normal 24 (count at offset 16), state 32 (epoch at 16).

    /// NORMAL, subtype 1, protocol 1, time 0x65000000, count 7.
    const NORMAL_HDR: &str =
        "00 00 01 00 01 00 00 00 00 00 00 65 00 00 00 00 07 00 00 00 00 00 00 00";
    /// SYNC_START, protocol 1, time 0x65000002, epoch {3, 0x65000001, 2, 0x1234}.
    const SYNC_START: &str = "01 00 00 00 01 00 00 00 02 00 00 65 00 00 00 00 \
                              03 00 00 00 01 00 00 65 02 00 00 00 34 12 00 00";
    /// UPDATE_COMPLETE, same header fields.
    const UPDATE_COMPLETE: &str = "04 00 00 00 01 00 00 00 02 00 00 65 00 00 00 00 \
                                   03 00 00 00 01 00 00 65 02 00 00 00 34 12 00 00";
    /// VERIFY_REQUEST, csum_id 0x0102030405060708.
    const VERIFY_REQUEST: &str = "05 00 00 00 01 00 00 00 02 00 00 65 00 00 00 00 \
                                  03 00 00 00 01 00 00 65 02 00 00 00 34 12 00 00 \
                                  08 07 06 05 04 03 02 01";
    /// VERIFY, csum_id 0x0102030405060708, csum a0 a1 .. bf.
    const VERIFY: &str = "06 00 00 00 01 00 00 00 02 00 00 65 00 00 00 00 \
                          03 00 00 00 01 00 00 65 02 00 00 00 34 12 00 00 \
                          08 07 06 05 04 03 02 01 \
                          a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab ac ad ae af \
                          b0 b1 b2 b3 b4 b5 b6 b7 b8 b9 ba bb bc bd be bf";

    fn epoch() -> SyncEpoch {
        SyncEpoch {
            epoch: 3,
            time: 0x6500_0001,
            nodeid: NodeId(2),
            pid: 0x1234,
        }
    }

    fn csum() -> [u8; 32] {
        std::array::from_fn(|i| 0xa0 + i as u8)
    }

    fn vectors() -> Vec<(Vec<u8>, Frame)> {
        let f = |time, message| Frame {
            protocol_version: 1,
            time,
            message,
        };
        vec![
            (
                hex(NORMAL_HDR),
                f(
                    0x6500_0000,
                    DfsmMessage::Normal {
                        subtype: 1,
                        count: 7,
                        payload: vec![],
                    },
                ),
            ),
            (
                hex(SYNC_START),
                f(0x6500_0002, DfsmMessage::SyncStart { epoch: epoch() }),
            ),
            (
                hex(UPDATE_COMPLETE),
                f(0x6500_0002, DfsmMessage::UpdateComplete { epoch: epoch() }),
            ),
            (
                hex(VERIFY_REQUEST),
                f(
                    0x6500_0002,
                    DfsmMessage::VerifyRequest {
                        epoch: epoch(),
                        csum_id: 0x0102_0304_0506_0708,
                    },
                ),
            ),
            (
                hex(VERIFY),
                f(
                    0x6500_0002,
                    DfsmMessage::Verify {
                        epoch: epoch(),
                        csum_id: 0x0102_0304_0506_0708,
                        csum: csum(),
                    },
                ),
            ),
        ]
    }

    #[test]
    fn c_vectors_decode_and_encode() {
        for (bytes, frame) in vectors() {
            assert_eq!(Frame::decode(&bytes).as_ref(), Ok(&frame), "{frame:?}");
            assert_eq!(frame.encode(), bytes, "{frame:?}");
            assert_eq!(frame.message.encoded_len(), bytes.len());
        }
    }

    #[test]
    fn header_sizes_match_c() {
        assert_eq!(hex(NORMAL_HDR).len(), NORMAL_HEADER_SIZE);
        assert_eq!(hex(SYNC_START).len(), STATE_HEADER_SIZE);
        assert_eq!(hex(VERIFY_REQUEST).len(), 40);
        assert_eq!(hex(VERIFY).len(), 72);
        assert_eq!(
            normal_header(1, 7, 1, 0x6500_0000).to_vec(),
            hex(NORMAL_HDR)
        );
        assert_eq!(
            state_header(DfsmMessageType::SyncStart, &epoch(), 1, 0x6500_0002).to_vec(),
            hex(SYNC_START)
        );
    }

    #[test]
    fn normal_with_payload_and_state_messages_round_trip() {
        let msgs = [
            DfsmMessage::Normal {
                subtype: 8,
                count: u64::MAX,
                payload: b"payload".to_vec(),
            },
            DfsmMessage::State {
                epoch: epoch(),
                state: vec![1, 2, 3],
            },
            DfsmMessage::State {
                epoch: epoch(),
                state: vec![],
            },
            DfsmMessage::Update {
                epoch: epoch(),
                update: vec![9; 100],
            },
        ];
        for m in msgs {
            let bytes = m.encode(0, 42);
            let frame = DfsmMessage::decode(&bytes).expect("decodes");
            assert_eq!(frame.protocol_version, 0);
            assert_eq!(frame.time, 42);
            assert_eq!(frame.message, m);
        }
    }

    #[test]
    fn every_truncated_prefix_is_refused() {
        for (bytes, _) in vectors() {
            for n in 0..bytes.len() {
                assert!(
                    Frame::decode(&bytes[..n]).is_err(),
                    "prefix {n} of {bytes:02x?}"
                );
            }
        }
    }

    #[test]
    fn errors_keep_version_and_epoch_in_c_order() {
        // 16 bytes of a NORMAL message from a newer protocol: C reports the
        // version before it sees that the header is short.
        let mut b = hex(NORMAL_HDR);
        b[4] = 2;
        let err = Frame::decode(&b[..16]).unwrap_err();
        assert_eq!(err.protocol_version(), Some(2));
        assert!(matches!(err, WireError::Truncated { need: 24, .. }));
        assert_eq!(
            Frame::decode(&b[..15]).unwrap_err(),
            WireError::Short { len: 15 }
        );

        // Unknown type with a complete state header: epoch kept.
        let mut s = hex(SYNC_START);
        s[0] = 7;
        let err = Frame::decode(&s).unwrap_err();
        assert!(matches!(err, WireError::UnknownType { msg_type: 7, .. }));
        assert_eq!(err.epoch(), Some(&epoch()));
        // Unknown type, short: a short state message.
        assert!(matches!(
            Frame::decode(&s[..20]).unwrap_err(),
            WireError::Truncated {
                msg_type: 7,
                need: 32,
                ..
            }
        ));

        // VERIFY_REQUEST with one byte too many.
        let mut v = hex(VERIFY_REQUEST);
        v.push(0);
        let err = Frame::decode(&v).unwrap_err();
        assert!(matches!(
            err,
            WireError::BadLength {
                expected: 8,
                got: 9,
                ..
            }
        ));
        assert_eq!(err.epoch(), Some(&epoch()));
        let mut v = hex(VERIFY);
        v.pop();
        assert!(matches!(
            Frame::decode(&v).unwrap_err(),
            WireError::BadLength {
                expected: 40,
                got: 39,
                ..
            }
        ));
    }

    #[test]
    fn sync_start_and_update_complete_ignore_extra_bytes_as_c() {
        let mut b = hex(SYNC_START);
        b.extend_from_slice(b"junk");
        assert_eq!(
            Frame::decode(&b).unwrap().message,
            DfsmMessage::SyncStart { epoch: epoch() }
        );
        let mut b = hex(UPDATE_COMPLETE);
        b.push(1);
        assert_eq!(
            Frame::decode(&b).unwrap().message,
            DfsmMessage::UpdateComplete { epoch: epoch() }
        );
    }

    #[test]
    fn protocol_version_check() {
        assert_eq!(check_protocol_version(1, 1), ProtocolCheck::Same);
        assert_eq!(check_protocol_version(2, 1), ProtocolCheck::Newer);
        assert_eq!(check_protocol_version(0, 1), ProtocolCheck::Older);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng::new(0x5eed_0001);
        let bases: Vec<Vec<u8>> = vectors().into_iter().map(|(b, _)| b).collect();
        for i in 0..20_000 {
            let input = if i % 2 == 0 {
                rng.bytes(96)
            } else {
                let base = &bases[rng.below(bases.len())];
                rng.mutate(base)
            };
            if let Ok(frame) = Frame::decode(&input) {
                // Whatever decodes re-encodes to something that decodes to
                // the same value.
                let again = Frame::decode(&frame.encode()).expect("re-decodes");
                assert_eq!(again, frame);
            }
        }
    }
}
