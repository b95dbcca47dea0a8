//! pmxcfs distributed finite state machine over corosync CPG.
//!
//! This crate reaches the database and the status only through callback
//! traits (see ARCHITECTURE.txt); its wire layer works on api-types values
//! and on plain structs of its own:
//!
//! - [`wire`]: the DFSM header and messages shared by both groups (dfsm.c);
//! - [`dcdb`]: the `pve_dcdb_v1` payloads: filesystem operations
//!   ([`pmxcfs_api_types::Operation`]), the memdb index (STATE) and the tree
//!   entries of a resync (UPDATE) (dcdb.c, memdb.h);
//! - [`kvstore`]: the `pve_kvstore_v1` payloads (status.c).
//!
//! Every decoder takes untrusted bytes, never panics and returns a typed
//! error; README.md lists the layouts with their C sources.

#![deny(unsafe_op_in_unsafe_fn)]

mod bytes;
pub mod dcdb;
pub mod dcdb_app;
pub mod kvstore;
pub mod kvstore_app;
pub mod machine;
pub mod wire;

#[cfg(test)]
mod dcdb_app_tests;
#[cfg(test)]
mod machine_tests;
#[cfg(test)]
mod sim;

pub use dcdb::{
    decode_operation, encode_operation, DcdbError, DcdbMessageType, IndexEntry, MemdbIndex,
    UpdatePayload,
};
pub use kvstore::{KvError, KvMessage, KvMessageType};
pub use wire::{
    check_protocol_version, DfsmMessage, DfsmMessageType, Frame, ProtocolCheck, SyncEpoch,
    WireError,
};

#[cfg(test)]
mod tests {
    //! The layers together, as a receiver sees a message: the DFSM frame,
    //! then the application payload.

    use super::*;
    use crate::bytes::test_util::{hex, Rng};
    use pmxcfs_api_types::{FileKind, Inode, NodeId, Operation};

    fn epoch() -> SyncEpoch {
        SyncEpoch {
            epoch: 1,
            time: 2,
            nodeid: NodeId(3),
            pid: 4,
        }
    }

    /// Whole messages: a dcdb WRITE, an UPDATE with a file, a STATE with an
    /// index, a kvstore UPDATE.
    fn messages() -> Vec<Vec<u8>> {
        let mut write = vec![];
        let op = Operation::Write {
            path: "nodes/n1/qemu-server/100.conf".into(),
            offset: 0,
            data: b"memory: 512\n".to_vec(),
            truncate: true,
        };
        let ty = encode_operation(&op, &mut write).unwrap();
        let entry = pmxcfs_api_types::TreeEntry {
            parent: Inode(1),
            inode: Inode(5),
            version: 5,
            writer: 3,
            mtime: 100,
            kind: FileKind::File,
            name: "x".into(),
            data: b"data".to_vec(),
        };
        let index = MemdbIndex {
            version: 5,
            last_inode: 5,
            writer: 3,
            mtime: 100,
            entries: vec![IndexEntry {
                inode: Inode(0),
                digest: [7; 32],
            }],
        };
        let mut kv = vec![];
        KvMessage::Update {
            key: "k".into(),
            value: vec![],
        }
        .encode_into(&mut kv)
        .unwrap();
        vec![
            DfsmMessage::Normal {
                subtype: ty as u16,
                count: 1,
                payload: write,
            }
            .encode(1, 100),
            DfsmMessage::Update {
                epoch: epoch(),
                update: entry.encode().unwrap(),
            }
            .encode(1, 100),
            DfsmMessage::State {
                epoch: epoch(),
                state: index.encode(),
            }
            .encode(1, 100),
            DfsmMessage::Normal {
                subtype: KvMessageType::Update as u16,
                count: 1,
                payload: kv,
            }
            .encode(0, 100),
        ]
    }

    /// Decodes a whole message down to its application value.
    fn decode_stack(bytes: &[u8]) -> Result<(), String> {
        let frame = Frame::decode(bytes).map_err(|e| e.to_string())?;
        match frame.message {
            DfsmMessage::Normal {
                subtype, payload, ..
            } if frame.protocol_version == 1 => decode_operation(subtype, &payload)
                .map(drop)
                .map_err(|e| e.to_string()),
            DfsmMessage::Normal {
                subtype, payload, ..
            } => KvMessage::decode(subtype, &payload)
                .map(drop)
                .map_err(|e| e.to_string()),
            DfsmMessage::Update { update, .. } => pmxcfs_api_types::TreeEntry::decode(&update)
                .map(drop)
                .map_err(|e| e.to_string()),
            DfsmMessage::State { state, .. } => MemdbIndex::decode(&state)
                .map(drop)
                .map_err(|e| e.to_string()),
            _ => Ok(()),
        }
    }

    #[test]
    fn c_normal_write_message() {
        // The 24-byte NORMAL header and the WRITE payload of the C vectors
        // in wire.rs and dcdb.rs, as one CPG message.
        let bytes = hex(
            "00 00 01 00 01 00 00 00 00 00 00 65 00 00 00 00 07 00 00 00 00 00 00 00 \
             03 00 00 00 05 00 00 00 10 00 00 00 00 00 00 00 00 00 00 00 \
             6e 6f 64 65 73 2f 6e 31 2f 78 2e 63 6f 6e 66 00 61 62 63",
        );
        let frame = Frame::decode(&bytes).unwrap();
        assert_eq!(frame.time, 0x6500_0000);
        let DfsmMessage::Normal {
            subtype,
            count,
            payload,
        } = frame.message
        else {
            panic!("not NORMAL");
        };
        assert_eq!((subtype, count), (DcdbMessageType::Write as u16, 7));
        assert_eq!(
            decode_operation(subtype, &payload),
            Ok(Operation::Write {
                path: "nodes/n1/x.conf".into(),
                offset: 5,
                data: b"abc".to_vec(),
                truncate: false
            })
        );
    }

    #[test]
    fn every_truncated_prefix_of_a_whole_message_is_refused() {
        // Except for the kvstore UPDATE, whose value ends where the message
        // ends (so it is refused only while the key field is cut).
        for (i, m) in messages().iter().enumerate() {
            assert_eq!(decode_stack(m), Ok(()));
            let limit = if i == 3 { 24 + 256 } else { m.len() };
            for n in 0..limit {
                assert!(decode_stack(&m[..n]).is_err(), "message {i} prefix {n}");
            }
        }
    }

    #[test]
    fn random_mutations_of_whole_messages_never_panic() {
        let mut rng = Rng::new(0x5eed_0005);
        let bases = messages();
        let mut decoded = 0;
        for _ in 0..20_000 {
            let base = &bases[rng.below(bases.len())];
            if decode_stack(&rng.mutate(base)).is_ok() {
                decoded += 1;
            }
        }
        // Some mutations still decode (e.g. in data bytes): the decoders
        // were reached past their checks.
        assert!(decoded > 1000, "{decoded}");
    }
}
