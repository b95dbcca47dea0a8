//! The payloads of the `pve_dcdb_v1` group (C `dcdb.c`, `dcdb.h`,
//! `memdb.h`): the filesystem messages (NORMAL), the memdb index (STATE)
//! and the tree entries of a resync (UPDATE). All little-endian.
//!
//! # Filesystem messages (`dcdb_send_fuse_message`, `dcdb_parse_fuse_message`)
//!
//! The NORMAL subtype is the [`DcdbMessageType`]; WRITE, MKDIR, DELETE,
//! RENAME, CREATE and MTIME carry
//!
//! ```text
//! offset size field
//!      0    4 size      number of data bytes
//!      4    4 offset    WRITE: file offset; MTIME: the new mtime
//!      8    4 pathlen   strlen(path) + 1, or 0 for no path
//!     12    4 tolen     strlen(to) + 1, or 0 for no 'to' (only RENAME has one)
//!     16    4 flags     WRITE: truncate (C passes it on as a gboolean)
//!     20      path      pathlen bytes, the last one NUL
//!             to        tolen bytes, the last one NUL
//!             data      size bytes
//! ```
//!
//! The message must be exactly `20 + size + pathlen + tolen` bytes. C sends
//! WRITE as (data, offset, flags 0), truncate as WRITE with size 0, offset =
//! the new length and flags 1, CREATE / MKDIR / DELETE with only a path,
//! RENAME with path and to, MTIME with the mtime in `offset`. The receiver
//! ignores the fields a type does not use. The mtime of every other change
//! is the `time` of the DFSM header, the writer the sender's node id.
//!
//! UNLOCK_REQUEST and UNLOCK (`dcdb_send_unlock`) carry the 32-byte
//! checksum of the lock directory (`memdb_tree_entry_csum`) and then the
//! path with its NUL: at least 33 bytes, the last one NUL.
//!
//! # STATE: the memdb index (`memdb_encode_index`, `memdb_index_t`)
//!
//! Header `{u64 version, u64 last_inode, u32 writer, u32 mtime, u32 size,
//! u32 bytes}` (32 bytes), then `size` entries `{u64 inode, u8 digest[32]}`
//! (40 bytes, no padding) sorted by inode. `bytes` is the total length.
//!
//! # UPDATE: one tree entry (`dcdb_send_update_inode`, `dcdb_parse_update_inode`)
//!
//! The fields are gathered one by one (no struct, no padding):
//!
//! ```text
//! offset size field
//!      0    8 parent
//!      8    8 inode
//!     16    8 version
//!     24    4 writer
//!     28    4 mtime
//!     32    4 size      file size (0 for directories)
//!     36    4 namelen   strlen(name) + 1
//!     40    1 type      DT_DIR 4 or DT_REG 8
//!     41      name      namelen bytes, the last one NUL
//!             data      size bytes (files only)
//! ```
//!
//! exactly `41 + namelen + size` bytes.
//!
//! # Strings
//!
//! Paths and names are read as C reads them: up to the first NUL of their
//! field (the field itself must end with a NUL). They must be UTF-8 to
//! become a [`String`] (the Rust tree keeps names as strings; C would take
//! any bytes). Lengths are added in 64 bits: C adds the three 32-bit
//! lengths in 32-bit arithmetic, which can wrap.

use pmxcfs_api_types::{FileKind, Inode, Operation, TreeEntry};

use crate::bytes::{c_str, Reader};

/// CPG group name, with the trailing NUL that C counts in its length.
pub const DCDB_CPG_GROUP_NAME: &[u8] = b"pve_dcdb_v1\0";
/// `DCDB_PROTOCOL_VERSION`.
pub const DCDB_PROTOCOL_VERSION: u32 = 1;
/// `DCDB_VERIFY_TIME`: seconds between two VERIFY_REQUESTs.
pub const DCDB_VERIFY_TIME: u32 = 60 * 60;

/// Fixed part of a filesystem message.
pub const FUSE_HEADER_SIZE: usize = 20;
/// Checksum size of the unlock messages.
pub const UNLOCK_CSUM_SIZE: usize = 32;
/// Fixed part of an UPDATE payload.
pub const UPDATE_HEADER_SIZE: usize = 41;
/// `sizeof(memdb_index_t)`.
pub const INDEX_HEADER_SIZE: usize = 32;
/// `sizeof(memdb_index_extry_t)`.
pub const INDEX_ENTRY_SIZE: usize = 40;

const DT_DIR: u8 = pmxcfs_api_types::DT_DIR;
const DT_REG: u8 = pmxcfs_api_types::DT_REG;

/// `dcdb_message_t`: the subtype of a dcdb NORMAL message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum DcdbMessageType {
    Write = 1,
    Mkdir = 2,
    Delete = 3,
    Rename = 4,
    Create = 5,
    Mtime = 6,
    UnlockRequest = 7,
    Unlock = 8,
}

impl DcdbMessageType {
    /// `DCDB_VALID_MESSAGE_TYPE`. C checks the type before the quorum and
    /// before parsing, so this is separate from [`decode_operation`].
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => Self::Write,
            2 => Self::Mkdir,
            3 => Self::Delete,
            4 => Self::Rename,
            5 => Self::Create,
            6 => Self::Mtime,
            7 => Self::UnlockRequest,
            8 => Self::Unlock,
            _ => return None,
        })
    }

    /// The message type that carries `op`.
    pub fn of(op: &Operation) -> Self {
        match op {
            Operation::Write { .. } => Self::Write,
            Operation::Create { .. } => Self::Create,
            Operation::Mkdir { .. } => Self::Mkdir,
            Operation::Delete { .. } => Self::Delete,
            Operation::Rename { .. } => Self::Rename,
            Operation::Mtime { .. } => Self::Mtime,
            Operation::UnlockRequest { .. } => Self::UnlockRequest,
            Operation::Unlock { .. } => Self::Unlock,
        }
    }
}

/// A filesystem message as on the wire (`dcdb_parse_fuse_message`'s
/// outputs). `path` and `to` are the C strings (before the first NUL),
/// `None` when their length field is 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FuseMessage<'a> {
    pub offset: u32,
    pub flags: u32,
    pub path: Option<&'a [u8]>,
    pub to: Option<&'a [u8]>,
    pub data: &'a [u8],
}

impl<'a> FuseMessage<'a> {
    /// `dcdb_parse_fuse_message`. Never panics.
    pub fn decode(payload: &'a [u8]) -> Result<FuseMessage<'a>, DcdbError> {
        const WHAT: &str = "fuse message";
        let mut r = Reader::new(payload);
        let truncated = || DcdbError::Truncated {
            what: WHAT,
            need: FUSE_HEADER_SIZE,
            got: payload.len(),
        };
        let size = r.u32().ok_or_else(truncated)?;
        let offset = r.u32().ok_or_else(truncated)?;
        let pathlen = r.u32().ok_or_else(truncated)?;
        let tolen = r.u32().ok_or_else(truncated)?;
        let flags = r.u32().ok_or_else(truncated)?;
        let declared = u64::from(size) + u64::from(pathlen) + u64::from(tolen);
        let got = r.remaining();
        let mismatch = || DcdbError::LengthMismatch {
            what: WHAT,
            declared,
            got,
        };
        if declared != got as u64 {
            return Err(mismatch());
        }
        let mut field = |len: u32, name: &'static str| -> Result<Option<&'a [u8]>, DcdbError> {
            if len == 0 {
                return Ok(None);
            }
            let bytes = r.take(len as usize).ok_or_else(mismatch)?;
            if bytes.last() != Some(&0) {
                return Err(DcdbError::Unterminated {
                    what: WHAT,
                    field: name,
                });
            }
            Ok(Some(c_str(bytes)))
        };
        let path = field(pathlen, "path")?;
        let to = field(tolen, "to")?;
        let data = r.take(size as usize).ok_or_else(mismatch)?;
        Ok(FuseMessage {
            offset,
            flags,
            path,
            to,
            data,
        })
    }

    /// Appends the message as `dcdb_send_fuse_message` gathers it.
    /// Refuses strings with a NUL inside (C would cut them there) and
    /// lengths beyond 32 bits.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), DcdbError> {
        fn str_len(s: Option<&[u8]>, field: &'static str) -> Result<u32, DcdbError> {
            let Some(s) = s else { return Ok(0) };
            if s.contains(&0) {
                return Err(DcdbError::EmbeddedNul { field });
            }
            u32_len(s.len() as u64 + 1, field)
        }
        let size = u32_len(self.data.len() as u64, "data")?;
        let pathlen = str_len(self.path, "path")?;
        let tolen = str_len(self.to, "to")?;
        out.reserve(FUSE_HEADER_SIZE + (pathlen + tolen) as usize + self.data.len());
        for v in [size, self.offset, pathlen, tolen, self.flags] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for s in [self.path, self.to].into_iter().flatten() {
            out.extend_from_slice(s);
            out.push(0);
        }
        out.extend_from_slice(self.data);
        Ok(())
    }
}

/// An UNLOCK_REQUEST / UNLOCK payload (`dcdb_parse_unlock_request`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnlockMessage<'a> {
    pub csum: [u8; UNLOCK_CSUM_SIZE],
    /// The C string of the path (may be empty).
    pub path: &'a [u8],
}

impl<'a> UnlockMessage<'a> {
    /// Never panics.
    pub fn decode(payload: &'a [u8]) -> Result<UnlockMessage<'a>, DcdbError> {
        const WHAT: &str = "unlock message";
        let mut r = Reader::new(payload);
        let truncated = DcdbError::Truncated {
            what: WHAT,
            need: UNLOCK_CSUM_SIZE + 1,
            got: payload.len(),
        };
        let csum = r.array().ok_or(truncated.clone())?;
        let rest = r.rest();
        if rest.is_empty() {
            return Err(truncated);
        }
        if rest.last() != Some(&0) {
            return Err(DcdbError::Unterminated {
                what: WHAT,
                field: "path",
            });
        }
        Ok(UnlockMessage {
            csum,
            path: c_str(rest),
        })
    }

    /// Appends the payload as `dcdb_send_unlock` gathers it.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), DcdbError> {
        if self.path.contains(&0) {
            return Err(DcdbError::EmbeddedNul { field: "path" });
        }
        out.extend_from_slice(&self.csum);
        out.extend_from_slice(self.path);
        out.push(0);
        Ok(())
    }
}

fn u32_len(len: u64, field: &'static str) -> Result<u32, DcdbError> {
    u32::try_from(len).map_err(|_| DcdbError::TooLarge { field, value: len })
}

fn utf8(bytes: &[u8], field: &'static str) -> Result<String, DcdbError> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| DcdbError::NotUtf8 { field })
}

/// Decodes the payload of a dcdb NORMAL message of subtype `msg_type` into
/// the operation it asks for, reading what `dcdb_deliver` reads for that
/// type. A missing path (length 0) is an error here; C would call memdb
/// with a NULL path and answer its error (EINVAL for most operations).
pub fn decode_operation(msg_type: u16, payload: &[u8]) -> Result<Operation, DcdbError> {
    let ty = DcdbMessageType::from_u16(msg_type).ok_or(DcdbError::UnknownType(msg_type))?;
    let required = |s: Option<&[u8]>, field: &'static str| {
        let s = s.ok_or(DcdbError::MissingField {
            what: "fuse message",
            field,
        })?;
        utf8(s, field)
    };
    let fuse = || -> Result<(FuseMessage<'_>, String), DcdbError> {
        let m = FuseMessage::decode(payload)?;
        let path = required(m.path, "path")?;
        Ok((m, path))
    };
    Ok(match ty {
        DcdbMessageType::Write => {
            let (m, path) = fuse()?;
            Operation::Write {
                path,
                offset: u64::from(m.offset),
                data: m.data.to_vec(),
                truncate: m.flags != 0,
            }
        }
        DcdbMessageType::Create => Operation::Create { path: fuse()?.1 },
        DcdbMessageType::Mkdir => Operation::Mkdir { path: fuse()?.1 },
        DcdbMessageType::Delete => Operation::Delete { path: fuse()?.1 },
        DcdbMessageType::Rename => {
            let (m, from) = fuse()?;
            Operation::Rename {
                from,
                to: required(m.to, "to")?,
            }
        }
        DcdbMessageType::Mtime => {
            let (m, path) = fuse()?;
            Operation::Mtime {
                path,
                mtime: m.offset,
            }
        }
        DcdbMessageType::UnlockRequest => {
            let m = UnlockMessage::decode(payload)?;
            Operation::UnlockRequest {
                path: utf8(m.path, "path")?,
                csum: m.csum,
            }
        }
        DcdbMessageType::Unlock => {
            let m = UnlockMessage::decode(payload)?;
            Operation::Unlock {
                path: utf8(m.path, "path")?,
                csum: m.csum,
            }
        }
    })
}

/// Appends the payload that carries `op` (as the C senders build it) and
/// returns the NORMAL subtype to send it with.
pub fn encode_operation(op: &Operation, out: &mut Vec<u8>) -> Result<DcdbMessageType, DcdbError> {
    let ty = DcdbMessageType::of(op);
    fn only_path(path: &str) -> FuseMessage<'_> {
        FuseMessage {
            offset: 0,
            flags: 0,
            path: Some(path.as_bytes()),
            to: None,
            data: &[],
        }
    }
    match op {
        Operation::Write {
            path,
            offset,
            data,
            truncate,
        } => FuseMessage {
            offset: u32::try_from(*offset).map_err(|_| DcdbError::TooLarge {
                field: "offset",
                value: *offset,
            })?,
            flags: u32::from(*truncate),
            path: Some(path.as_bytes()),
            to: None,
            data,
        }
        .encode_into(out)?,
        Operation::Create { path } | Operation::Mkdir { path } | Operation::Delete { path } => {
            only_path(path).encode_into(out)?
        }
        Operation::Rename { from, to } => FuseMessage {
            to: Some(to.as_bytes()),
            ..only_path(from)
        }
        .encode_into(out)?,
        Operation::Mtime { path, mtime } => FuseMessage {
            offset: *mtime,
            ..only_path(path)
        }
        .encode_into(out)?,
        Operation::UnlockRequest { path, csum } | Operation::Unlock { path, csum } => {
            UnlockMessage {
                csum: *csum,
                path: path.as_bytes(),
            }
            .encode_into(out)?
        }
    }
    Ok(ty)
}

/// The UPDATE payload of a resync: one [`TreeEntry`]
/// (`dcdb_send_update_inode` / `dcdb_parse_update_inode`).
pub trait UpdatePayload: Sized {
    fn decode(payload: &[u8]) -> Result<Self, DcdbError>;
    fn encode(&self) -> Result<Vec<u8>, DcdbError>;
}

impl UpdatePayload for TreeEntry {
    /// `dcdb_parse_update_inode`, plus: a directory must have size 0 (C
    /// would keep the size and drop the bytes; C never sends that). Never
    /// panics.
    fn decode(payload: &[u8]) -> Result<TreeEntry, DcdbError> {
        const WHAT: &str = "update message";
        let mut r = Reader::new(payload);
        let truncated = || DcdbError::Truncated {
            what: WHAT,
            need: UPDATE_HEADER_SIZE,
            got: payload.len(),
        };
        let parent = r.u64().ok_or_else(truncated)?;
        let inode = r.u64().ok_or_else(truncated)?;
        let version = r.u64().ok_or_else(truncated)?;
        let writer = r.u32().ok_or_else(truncated)?;
        let mtime = r.u32().ok_or_else(truncated)?;
        let size = r.u32().ok_or_else(truncated)?;
        let namelen = r.u32().ok_or_else(truncated)?;
        let dt = r.u8().ok_or_else(truncated)?;
        let kind = match dt {
            DT_DIR => FileKind::Dir,
            DT_REG => FileKind::File,
            other => return Err(DcdbError::BadType(other)),
        };
        let declared = u64::from(size) + u64::from(namelen);
        let got = r.remaining();
        let mismatch = || DcdbError::LengthMismatch {
            what: WHAT,
            declared,
            got,
        };
        if declared != got as u64 {
            return Err(mismatch());
        }
        let name = r.take(namelen as usize).ok_or_else(mismatch)?;
        if name.last() != Some(&0) {
            return Err(DcdbError::Unterminated {
                what: WHAT,
                field: "name",
            });
        }
        let name = utf8(c_str(name), "name")?;
        let data = r.take(size as usize).ok_or_else(mismatch)?;
        if kind == FileKind::Dir && size != 0 {
            return Err(DcdbError::DirectoryWithSize(size));
        }
        Ok(TreeEntry {
            parent: Inode(parent),
            inode: Inode(inode),
            version,
            writer,
            mtime,
            kind,
            name,
            data: data.to_vec(),
        })
    }

    /// The payload as `dcdb_send_update_inode` gathers it.
    fn encode(&self) -> Result<Vec<u8>, DcdbError> {
        if self.name.as_bytes().contains(&0) {
            return Err(DcdbError::EmbeddedNul { field: "name" });
        }
        if self.kind == FileKind::Dir && !self.data.is_empty() {
            return Err(DcdbError::DirectoryWithSize(
                u32::try_from(self.data.len()).unwrap_or(u32::MAX),
            ));
        }
        let size = u32_len(self.data.len() as u64, "data")?;
        let namelen = u32_len(self.name.len() as u64 + 1, "name")?;
        let mut out =
            Vec::with_capacity(UPDATE_HEADER_SIZE + self.name.len() + 1 + self.data.len());
        out.extend_from_slice(&self.parent.0.to_le_bytes());
        out.extend_from_slice(&self.inode.0.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.writer.to_le_bytes());
        out.extend_from_slice(&self.mtime.to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&namelen.to_le_bytes());
        out.push(self.kind.dt());
        out.extend_from_slice(self.name.as_bytes());
        out.push(0);
        out.extend_from_slice(&self.data);
        Ok(out)
    }
}

/// One entry of the memdb index: an inode and the SHA-256 digest of its
/// attributes, name and data (see pmxcfs-memdb/src/index.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IndexEntry {
    pub inode: Inode,
    pub digest: [u8; 32],
}

/// The memdb index, the STATE of a dcdb member (`memdb_index_t`).
///
/// Two indexes are equal exactly when their encodings are (C compares the
/// received indexes with `memcmp` to find the members already in sync).
/// The entries are kept in the order received; C's encoder sorts them by
/// inode, but nothing checks that a peer did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemdbIndex {
    /// Root (database) version.
    pub version: u64,
    pub last_inode: u64,
    /// Writer and mtime of the last change (the root's).
    pub writer: u32,
    pub mtime: u32,
    pub entries: Vec<IndexEntry>,
}

impl MemdbIndex {
    /// The checks of `dcdb_process_state_update` (at least the header,
    /// `bytes` equal to the length), plus: the entries fill the message
    /// exactly (C trusts `size`). Never panics.
    pub fn decode(state: &[u8]) -> Result<MemdbIndex, DcdbError> {
        let mut r = Reader::new(state);
        let truncated = || DcdbError::Truncated {
            what: "memdb index",
            need: INDEX_HEADER_SIZE,
            got: state.len(),
        };
        let version = r.u64().ok_or_else(truncated)?;
        let last_inode = r.u64().ok_or_else(truncated)?;
        let writer = r.u32().ok_or_else(truncated)?;
        let mtime = r.u32().ok_or_else(truncated)?;
        let size = r.u32().ok_or_else(truncated)?;
        let bytes = r.u32().ok_or_else(truncated)?;
        if u64::from(bytes) != state.len() as u64 {
            return Err(DcdbError::IndexSizeMismatch {
                declared: bytes,
                got: state.len(),
            });
        }
        let count_error = DcdbError::IndexEntryCount {
            entries: size,
            bytes: state.len(),
        };
        if INDEX_HEADER_SIZE as u64 + u64::from(size) * INDEX_ENTRY_SIZE as u64
            != state.len() as u64
        {
            return Err(count_error);
        }
        let mut entries = Vec::with_capacity(size as usize);
        for _ in 0..size {
            let inode = r.u64().ok_or(count_error.clone())?;
            let digest = r.array().ok_or(count_error.clone())?;
            entries.push(IndexEntry {
                inode: Inode(inode),
                digest,
            });
        }
        Ok(MemdbIndex {
            version,
            last_inode,
            writer,
            mtime,
            entries,
        })
    }

    /// The bytes of `memdb_encode_index` for these values.
    pub fn encode(&self) -> Vec<u8> {
        let bytes = INDEX_HEADER_SIZE + self.entries.len() * INDEX_ENTRY_SIZE;
        let mut out = Vec::with_capacity(bytes);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.last_inode.to_le_bytes());
        out.extend_from_slice(&self.writer.to_le_bytes());
        out.extend_from_slice(&self.mtime.to_le_bytes());
        // The index of a tree of at most a few hundred thousand inodes;
        // saturate rather than wrap on absurd sizes.
        out.extend_from_slice(
            &u32::try_from(self.entries.len())
                .unwrap_or(u32::MAX)
                .to_le_bytes(),
        );
        out.extend_from_slice(&u32::try_from(bytes).unwrap_or(u32::MAX).to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.inode.0.to_le_bytes());
            out.extend_from_slice(&e.digest);
        }
        out
    }
}

/// A dcdb payload that could not be decoded or encoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DcdbError {
    /// Not 1..=8 (C: "received unknown message type", leaves the group).
    #[error("unknown dcdb message type {0}")]
    UnknownType(u16),
    #[error("short {what} ({got} bytes < {need})")]
    Truncated {
        what: &'static str,
        need: usize,
        got: usize,
    },
    /// The length fields do not add up to the bytes after the header.
    #[error("malformed {what}: length fields say {declared} bytes, {got} follow")]
    LengthMismatch {
        what: &'static str,
        declared: u64,
        got: usize,
    },
    #[error("malformed {what}: '{field}' not NUL-terminated")]
    Unterminated {
        what: &'static str,
        field: &'static str,
    },
    /// A path the operation needs has length 0.
    #[error("{what} without '{field}'")]
    MissingField {
        what: &'static str,
        field: &'static str,
    },
    #[error("'{field}' is not UTF-8")]
    NotUtf8 { field: &'static str },
    /// UPDATE with a type other than DT_DIR / DT_REG.
    #[error("update message with unknown inode type {0}")]
    BadType(u8),
    #[error("directory update with size {0}")]
    DirectoryWithSize(u32),
    #[error("malformed memdb index (bytes field {declared}, length {got})")]
    IndexSizeMismatch { declared: u32, got: usize },
    #[error("malformed memdb index ({entries} entries in {bytes} bytes)")]
    IndexEntryCount { entries: u32, bytes: usize },
    /// Encoding: a string with a NUL inside (C would cut it there).
    #[error("'{field}' contains a NUL byte")]
    EmbeddedNul { field: &'static str },
    /// Encoding: a value beyond its 32-bit wire field.
    #[error("{field} does not fit the 32-bit wire field ({value})")]
    TooLarge { field: &'static str, value: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bytes::test_util::{hex, Rng};

    // Byte vectors printed by a throwaway C program (outside the
    // repository) that retypes the argument handling of
    // dcdb_send_fuse_message / dcdb_send_unlock / dcdb_send_update_inode
    // (the same iovec arrays, same field types) and the memdb_index_t /
    // memdb_index_extry_t declarations of memdb.h, and dumps the gathered
    // bytes; gcc on x86_64 (sizeof(memdb_index_t) 32, entry 40).

    /// dcdb_send_fuse_message(WRITE, "nodes/n1/x.conf", NULL, "abc", 3, 5, 0)
    const WRITE: &str = "03 00 00 00 05 00 00 00 10 00 00 00 00 00 00 00 00 00 00 00 \
                         6e 6f 64 65 73 2f 6e 31 2f 78 2e 63 6f 6e 66 00 61 62 63";
    /// truncate: (WRITE, "a", NULL, NULL, 0, 10, 1)
    const TRUNCATE: &str = "00 00 00 00 0a 00 00 00 02 00 00 00 00 00 00 00 01 00 00 00 61 00";
    /// (CREATE, "a", NULL, NULL, 0, 0, 0); MKDIR and DELETE are the same bytes.
    const CREATE: &str = "00 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 00 00 00 00 61 00";
    /// (RENAME, "a", "bc", NULL, 0, 0, 0)
    const RENAME: &str =
        "00 00 00 00 00 00 00 00 02 00 00 00 03 00 00 00 00 00 00 00 61 00 62 63 00";
    /// (MTIME, "priv/lock/x", NULL, NULL, 0, 0x65000003, 0)
    const MTIME: &str = "00 00 00 00 03 00 00 65 0c 00 00 00 00 00 00 00 00 00 00 00 \
                         70 72 69 76 2f 6c 6f 63 6b 2f 78 00";
    /// dcdb_send_unlock("priv/lock/x", csum a0..bf, _)
    const UNLOCK: &str = "a0 a1 a2 a3 a4 a5 a6 a7 a8 a9 aa ab ac ad ae af \
                          b0 b1 b2 b3 b4 b5 b6 b7 b8 b9 ba bb bc bd be bf \
                          70 72 69 76 2f 6c 6f 63 6b 2f 78 00";
    /// dcdb_send_update_inode: file "f.cfg", parent 0, inode 0x10, version
    /// 0x11, writer 2, mtime 0x65000004, data "xyz".
    const UPDATE_FILE: &str = "00 00 00 00 00 00 00 00 10 00 00 00 00 00 00 00 \
                               11 00 00 00 00 00 00 00 02 00 00 00 04 00 00 65 \
                               03 00 00 00 06 00 00 00 08 66 2e 63 66 67 00 78 79 7a";
    /// dcdb_send_update_inode: the root (dir, name "", inode 0, version
    /// 0x12, writer 1, mtime 0x65000005).
    const UPDATE_ROOT: &str = "00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 \
                               12 00 00 00 00 00 00 00 01 00 00 00 05 00 00 65 \
                               00 00 00 00 01 00 00 00 04 00";

    /// memdb_index_t: version 0x12, last_inode 0x10, writer 1, mtime
    /// 0x65000005, 2 entries (inode 0 digest 11.., inode 0x10 digest 22..).
    fn index_vector() -> Vec<u8> {
        let mut v = hex("12 00 00 00 00 00 00 00 10 00 00 00 00 00 00 00 \
             01 00 00 00 05 00 00 65 02 00 00 00 70 00 00 00 \
             00 00 00 00 00 00 00 00");
        v.extend_from_slice(&[0x11; 32]);
        v.extend_from_slice(&hex("10 00 00 00 00 00 00 00"));
        v.extend_from_slice(&[0x22; 32]);
        v
    }

    fn csum() -> [u8; 32] {
        std::array::from_fn(|i| 0xa0 + i as u8)
    }

    fn op_vectors() -> Vec<(DcdbMessageType, Vec<u8>, Operation)> {
        let s = |p: &str| p.to_string();
        vec![
            (
                DcdbMessageType::Write,
                hex(WRITE),
                Operation::Write {
                    path: s("nodes/n1/x.conf"),
                    offset: 5,
                    data: b"abc".to_vec(),
                    truncate: false,
                },
            ),
            (
                DcdbMessageType::Write,
                hex(TRUNCATE),
                Operation::Write {
                    path: s("a"),
                    offset: 10,
                    data: vec![],
                    truncate: true,
                },
            ),
            (
                DcdbMessageType::Create,
                hex(CREATE),
                Operation::Create { path: s("a") },
            ),
            (
                DcdbMessageType::Mkdir,
                hex(CREATE),
                Operation::Mkdir { path: s("a") },
            ),
            (
                DcdbMessageType::Delete,
                hex(CREATE),
                Operation::Delete { path: s("a") },
            ),
            (
                DcdbMessageType::Rename,
                hex(RENAME),
                Operation::Rename {
                    from: s("a"),
                    to: s("bc"),
                },
            ),
            (
                DcdbMessageType::Mtime,
                hex(MTIME),
                Operation::Mtime {
                    path: s("priv/lock/x"),
                    mtime: 0x6500_0003,
                },
            ),
            (
                DcdbMessageType::Unlock,
                hex(UNLOCK),
                Operation::Unlock {
                    path: s("priv/lock/x"),
                    csum: csum(),
                },
            ),
            (
                DcdbMessageType::UnlockRequest,
                hex(UNLOCK),
                Operation::UnlockRequest {
                    path: s("priv/lock/x"),
                    csum: csum(),
                },
            ),
        ]
    }

    fn update_vectors() -> Vec<(Vec<u8>, TreeEntry)> {
        vec![
            (
                hex(UPDATE_FILE),
                TreeEntry {
                    parent: Inode(0),
                    inode: Inode(0x10),
                    version: 0x11,
                    writer: 2,
                    mtime: 0x6500_0004,
                    kind: FileKind::File,
                    name: "f.cfg".into(),
                    data: b"xyz".to_vec(),
                },
            ),
            (
                hex(UPDATE_ROOT),
                TreeEntry {
                    parent: Inode(0),
                    inode: Inode(0),
                    version: 0x12,
                    writer: 1,
                    mtime: 0x6500_0005,
                    kind: FileKind::Dir,
                    name: String::new(),
                    data: vec![],
                },
            ),
        ]
    }

    #[test]
    fn message_type_numbers_match_dcdb_h() {
        let all = [
            (1, DcdbMessageType::Write),
            (2, DcdbMessageType::Mkdir),
            (3, DcdbMessageType::Delete),
            (4, DcdbMessageType::Rename),
            (5, DcdbMessageType::Create),
            (6, DcdbMessageType::Mtime),
            (7, DcdbMessageType::UnlockRequest),
            (8, DcdbMessageType::Unlock),
        ];
        for (n, ty) in all {
            assert_eq!(DcdbMessageType::from_u16(n), Some(ty));
            assert_eq!(ty as u16, n);
        }
        assert_eq!(DcdbMessageType::from_u16(0), None);
        assert_eq!(DcdbMessageType::from_u16(9), None);
    }

    #[test]
    fn c_operation_vectors_decode_and_encode() {
        for (ty, bytes, op) in op_vectors() {
            assert_eq!(decode_operation(ty as u16, &bytes).as_ref(), Ok(&op));
            let mut out = vec![];
            assert_eq!(encode_operation(&op, &mut out), Ok(ty));
            assert_eq!(out, bytes, "{op:?}");
        }
    }

    #[test]
    fn c_update_vectors_decode_and_encode() {
        for (bytes, entry) in update_vectors() {
            assert_eq!(TreeEntry::decode(&bytes).as_ref(), Ok(&entry));
            assert_eq!(entry.encode().unwrap(), bytes);
        }
    }

    #[test]
    fn c_index_vector_decodes_and_encodes() {
        let bytes = index_vector();
        assert_eq!(bytes.len(), 112);
        let idx = MemdbIndex::decode(&bytes).unwrap();
        assert_eq!(idx.version, 0x12);
        assert_eq!(idx.last_inode, 0x10);
        assert_eq!(idx.writer, 1);
        assert_eq!(idx.mtime, 0x6500_0005);
        assert_eq!(
            idx.entries,
            vec![
                IndexEntry {
                    inode: Inode(0),
                    digest: [0x11; 32]
                },
                IndexEntry {
                    inode: Inode(0x10),
                    digest: [0x22; 32]
                },
            ]
        );
        assert_eq!(idx.encode(), bytes);
    }

    #[test]
    fn every_truncated_prefix_is_refused() {
        for (ty, bytes, _) in op_vectors() {
            for n in 0..bytes.len() {
                assert!(
                    decode_operation(ty as u16, &bytes[..n]).is_err(),
                    "{ty:?} prefix {n}"
                );
            }
        }
        for (bytes, _) in update_vectors() {
            for n in 0..bytes.len() {
                assert!(TreeEntry::decode(&bytes[..n]).is_err(), "prefix {n}");
            }
        }
        let idx = index_vector();
        for n in 0..idx.len() {
            assert!(MemdbIndex::decode(&idx[..n]).is_err(), "prefix {n}");
        }
    }

    #[test]
    fn malformed_fuse_messages() {
        // Extra byte: length mismatch.
        let mut b = hex(CREATE);
        b.push(0);
        assert!(matches!(
            decode_operation(5, &b),
            Err(DcdbError::LengthMismatch {
                declared: 2,
                got: 3,
                ..
            })
        ));
        // Path not terminated.
        let mut b = hex(CREATE);
        *b.last_mut().unwrap() = b'b';
        assert!(matches!(
            decode_operation(5, &b),
            Err(DcdbError::Unterminated { field: "path", .. })
        ));
        // No path at all (pathlen 0): C calls memdb with NULL.
        let b = hex("00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00");
        assert!(matches!(
            decode_operation(3, &b),
            Err(DcdbError::MissingField { field: "path", .. })
        ));
        // RENAME without 'to'.
        assert!(matches!(
            decode_operation(4, &hex(CREATE)),
            Err(DcdbError::MissingField { field: "to", .. })
        ));
        // Lengths whose 32-bit sum wraps to the real length: C's u32
        // addition would accept it; the 64-bit sum does not.
        let mut b = hex(CREATE);
        b[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        b[12..16].copy_from_slice(&1u32.to_le_bytes());
        assert!(matches!(
            decode_operation(1, &b),
            Err(DcdbError::LengthMismatch { .. })
        ));
        // Unknown type.
        assert_eq!(
            decode_operation(9, &hex(CREATE)),
            Err(DcdbError::UnknownType(9))
        );
        // Not UTF-8.
        let mut b = hex(CREATE);
        b[20] = 0xff;
        assert_eq!(
            decode_operation(5, &b),
            Err(DcdbError::NotUtf8 { field: "path" })
        );
    }

    #[test]
    fn strings_are_read_up_to_the_first_nul_as_c() {
        // path field "a\0b\0": C sees "a".
        let b = hex("00 00 00 00 00 00 00 00 04 00 00 00 00 00 00 00 00 00 00 00 61 00 62 00");
        assert_eq!(
            decode_operation(5, &b),
            Ok(Operation::Create { path: "a".into() })
        );
        // Unlock with an empty path is 33 bytes and accepted by C.
        let mut u = csum().to_vec();
        u.push(0);
        assert_eq!(
            decode_operation(8, &u),
            Ok(Operation::Unlock {
                path: String::new(),
                csum: csum()
            })
        );
        assert!(decode_operation(8, &u[..32]).is_err());
    }

    #[test]
    fn fields_a_type_does_not_use_are_ignored_as_c() {
        // CREATE with data, offset and flags: only the path counts.
        let mut b = vec![];
        FuseMessage {
            offset: 9,
            flags: 1,
            path: Some(b"x"),
            to: Some(b"y"),
            data: b"zz",
        }
        .encode_into(&mut b)
        .unwrap();
        assert_eq!(
            decode_operation(5, &b),
            Ok(Operation::Create { path: "x".into() })
        );
        // Any non-zero flags value truncates (C passes flags as gboolean).
        let mut w = hex(TRUNCATE);
        w[16] = 2;
        assert!(matches!(
            decode_operation(1, &w),
            Ok(Operation::Write { truncate: true, .. })
        ));
    }

    #[test]
    fn encode_refuses_what_the_wire_cannot_carry() {
        let mut out = vec![];
        assert_eq!(
            encode_operation(
                &Operation::Write {
                    path: "a".into(),
                    offset: 1 << 32,
                    data: vec![],
                    truncate: false
                },
                &mut out
            ),
            Err(DcdbError::TooLarge {
                field: "offset",
                value: 1 << 32
            })
        );
        assert_eq!(
            encode_operation(
                &Operation::Create {
                    path: "a\0b".into()
                },
                &mut out
            ),
            Err(DcdbError::EmbeddedNul { field: "path" })
        );
        let dir = TreeEntry {
            parent: Inode(0),
            inode: Inode(1),
            version: 1,
            writer: 0,
            mtime: 0,
            kind: FileKind::Dir,
            name: "d".into(),
            data: vec![1],
        };
        assert!(dir.encode().is_err());
    }

    #[test]
    fn malformed_updates_and_indexes() {
        let mut b = hex(UPDATE_FILE);
        b[40] = 1; // type
        assert_eq!(TreeEntry::decode(&b), Err(DcdbError::BadType(1)));
        let mut b = hex(UPDATE_FILE);
        b[36..40].copy_from_slice(&0u32.to_le_bytes()); // namelen 0
        b.truncate(41 + 3);
        b[41..44].copy_from_slice(b"xyz");
        assert!(TreeEntry::decode(&b).is_err());
        // Directory with a size.
        let mut b = hex(UPDATE_ROOT);
        b[32] = 1;
        b.push(7);
        assert_eq!(TreeEntry::decode(&b), Err(DcdbError::DirectoryWithSize(1)));

        // Index whose size field claims more entries than it has.
        let mut idx = index_vector();
        idx[24] = 3;
        assert!(matches!(
            MemdbIndex::decode(&idx),
            Err(DcdbError::IndexEntryCount { entries: 3, .. })
        ));
        // bytes field different from the length.
        let mut idx = index_vector();
        idx[28] = 0x71;
        assert!(matches!(
            MemdbIndex::decode(&idx),
            Err(DcdbError::IndexSizeMismatch { declared: 0x71, .. })
        ));
    }

    #[test]
    fn random_operations_round_trip() {
        let mut rng = Rng::new(0x5eed_0002);
        let name = |rng: &mut Rng| -> String {
            let n = 1 + rng.below(40);
            (0..n)
                .map(|_| char::from(b"abz019/._-"[rng.below(10)]))
                .collect()
        };
        for _ in 0..2000 {
            let path = name(&mut rng);
            let csum: [u8; 32] = std::array::from_fn(|_| rng.next_u64() as u8);
            let op = match rng.below(8) {
                0 => Operation::Write {
                    path,
                    offset: rng.next_u64() & 0xffff_ffff,
                    data: rng.bytes(300),
                    truncate: rng.below(2) == 1,
                },
                1 => Operation::Create { path },
                2 => Operation::Mkdir { path },
                3 => Operation::Delete { path },
                4 => Operation::Rename {
                    from: path,
                    to: name(&mut rng),
                },
                5 => Operation::Mtime {
                    path,
                    mtime: rng.next_u64() as u32,
                },
                6 => Operation::UnlockRequest { path, csum },
                _ => Operation::Unlock { path, csum },
            };
            let mut out = vec![];
            let ty = encode_operation(&op, &mut out).unwrap();
            assert_eq!(decode_operation(ty as u16, &out), Ok(op));

            let kind = if rng.below(2) == 0 {
                FileKind::Dir
            } else {
                FileKind::File
            };
            let entry = TreeEntry {
                parent: Inode(rng.next_u64()),
                inode: Inode(rng.next_u64()),
                version: rng.next_u64(),
                writer: rng.next_u64() as u32,
                mtime: rng.next_u64() as u32,
                kind,
                name: name(&mut rng),
                data: if kind == FileKind::File {
                    rng.bytes(200)
                } else {
                    vec![]
                },
            };
            assert_eq!(TreeEntry::decode(&entry.encode().unwrap()), Ok(entry));
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng::new(0x5eed_0003);
        let mut bases: Vec<Vec<u8>> = op_vectors().into_iter().map(|(_, b, _)| b).collect();
        bases.extend(update_vectors().into_iter().map(|(b, _)| b));
        bases.push(index_vector());
        for i in 0..30_000 {
            let input = if i % 2 == 0 {
                rng.bytes(128)
            } else {
                let base = &bases[rng.below(bases.len())];
                rng.mutate(base)
            };
            let ty = rng.below(10) as u16;
            if let Ok(op) = decode_operation(ty, &input) {
                let mut out = vec![];
                let enc_ty = encode_operation(&op, &mut out).expect("re-encodes");
                assert_eq!(decode_operation(enc_ty as u16, &out), Ok(op));
            }
            if let Ok(e) = TreeEntry::decode(&input) {
                assert_eq!(TreeEntry::decode(&e.encode().unwrap()), Ok(e));
            }
            if let Ok(idx) = MemdbIndex::decode(&input) {
                assert_eq!(idx.encode(), input);
            }
        }
    }
}
