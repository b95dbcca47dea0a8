//! The index of `memdb_encode_index` and the checksums of
//! `memdb_compute_checksum` / `memdb_tree_entry_csum`.
//!
//! Byte layout (little-endian, x86_64 C struct layout):
//! header `{u64 version, u64 last_inode, u32 writer, u32 mtime, u32 size,
//! u32 bytes}` (32 bytes), then per entry sorted by inode
//! `{u64 inode, u8 digest[32]}` (40 bytes). The digest covers version,
//! writer, mtime, size, type (1 byte), parent, the name without NUL and the
//! data of non-empty files; not the inode.

use sha2::{Digest, Sha256};

use crate::tree::{Content, Entry, Tree};

pub const INDEX_HEADER_SIZE: usize = 32;
pub const INDEX_ENTRY_SIZE: usize = 40;

/// The fixed header of an encoded index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexHeader {
    pub version: u64,
    pub last_inode: u64,
    pub writer: u32,
    pub mtime: u32,
    pub size: u32,
    pub bytes: u32,
}

impl IndexHeader {
    pub fn parse(buf: &[u8]) -> Option<IndexHeader> {
        let b = buf.get(..INDEX_HEADER_SIZE)?;
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        Some(IndexHeader {
            version: u64_at(0),
            last_inode: u64_at(8),
            writer: u32_at(16),
            mtime: u32_at(20),
            size: u32_at(24),
            bytes: u32_at(28),
        })
    }
}

/// The inodes of an encoded index, in its order; None if the bytes are not
/// an index (sizes disagree).
pub(crate) fn index_inodes(buf: &[u8]) -> Option<Vec<u64>> {
    let h = IndexHeader::parse(buf)?;
    let n = h.size as usize;
    if h.bytes as usize != buf.len() || INDEX_HEADER_SIZE + n * INDEX_ENTRY_SIZE != buf.len() {
        return None;
    }
    Some(
        (0..n)
            .map(|i| {
                let o = INDEX_HEADER_SIZE + i * INDEX_ENTRY_SIZE;
                u64::from_le_bytes(buf[o..o + 8].try_into().unwrap_or([0; 8]))
            })
            .collect(),
    )
}

fn hash_fields(h: &mut Sha256, e: &Entry) {
    h.update(e.version.to_le_bytes());
    h.update(e.writer.to_le_bytes());
    h.update(e.mtime.to_le_bytes());
    h.update(e.size().to_le_bytes());
    h.update([e.kind.dt()]);
    h.update(e.parent.0.to_le_bytes());
    h.update(e.name.as_bytes());
    if !e.is_dir() && !e.data.is_empty() {
        e.data.with_bytes(|b| h.update(b));
    }
}

/// `memdb_tree_entry_csum`: like the index digest, with the inode first.
pub(crate) fn entry_csum(e: &Entry) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(e.inode.0.to_le_bytes());
    hash_fields(&mut h, e);
    h.finalize().into()
}

/// `memdb_encode_index`.
pub(crate) fn encode_index(tree: &Tree) -> Vec<u8> {
    let entries = tree.sorted();
    let root = tree.root();
    let bytes = INDEX_HEADER_SIZE + entries.len() * INDEX_ENTRY_SIZE;
    let last_inode = entries.iter().map(|e| e.inode.0).max().unwrap_or(0);
    let mut out = Vec::with_capacity(bytes);
    out.extend_from_slice(&root.version.to_le_bytes());
    out.extend_from_slice(&last_inode.to_le_bytes());
    out.extend_from_slice(&root.writer.to_le_bytes());
    out.extend_from_slice(&root.mtime.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    out.extend_from_slice(&(bytes as u32).to_le_bytes());
    for e in entries {
        let mut h = Sha256::new();
        hash_fields(&mut h, e);
        out.extend_from_slice(&e.inode.0.to_le_bytes());
        out.extend_from_slice(&h.finalize());
    }
    out
}

/// `memdb_compute_checksum`: one SHA256 over all entries in inode order.
pub(crate) fn compute_checksum(tree: &Tree) -> [u8; 32] {
    let mut h = Sha256::new();
    for e in tree.sorted() {
        h.update(e.inode.0.to_le_bytes());
        hash_fields(&mut h, e);
    }
    h.finalize().into()
}
