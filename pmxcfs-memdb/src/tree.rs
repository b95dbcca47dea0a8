//! The in-memory tree: entries by inode, children by name; file contents
//! held compressed where that saves memory ([`Data`]).

use std::collections::{BTreeMap, HashMap};

use pmxcfs_api_types::{FileKind, Inode, TreeEntry};

/// One file or directory.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub inode: Inode,
    pub parent: Inode,
    pub version: u64,
    pub writer: u32,
    pub mtime: u32,
    pub kind: FileKind,
    pub name: String,
    /// File contents; always empty for directories.
    pub data: Data,
    /// Children by name; always empty for files.
    pub children: BTreeMap<String, Inode>,
}

impl Entry {
    pub fn size(&self) -> u32 {
        // Files are capped at 1 MiB, so this never truncates.
        self.data.len() as u32
    }

    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Dir
    }

    /// The entry as a resync sends it and `--print-index` shows it.
    pub fn to_tree_entry(&self) -> TreeEntry {
        TreeEntry {
            inode: self.inode,
            parent: self.parent,
            version: self.version,
            writer: self.writer,
            mtime: self.mtime,
            kind: self.kind,
            name: self.name.clone(),
            data: self.data.to_vec(),
        }
    }
}

/// The tree. Inode 0 is the root; its version is the database version.
#[derive(Debug)]
pub(crate) struct Tree {
    pub entries: HashMap<Inode, Entry>,
}

impl Tree {
    pub fn new_root(version: u64, writer: u32, mtime: u32) -> Self {
        let root = Entry {
            inode: Inode::ROOT,
            parent: Inode::ROOT,
            version,
            writer,
            mtime,
            kind: FileKind::Dir,
            name: String::new(),
            data: Default::default(),
            children: BTreeMap::new(),
        };
        let mut entries = HashMap::new();
        entries.insert(Inode::ROOT, root);
        Tree { entries }
    }

    /// The tree of the loaded `entries` (without the root, linked to their
    /// parents except the root's children) and the root's fields.
    pub fn with_entries(
        mut entries: HashMap<Inode, Entry>,
        version: u64,
        writer: u32,
        mtime: u32,
    ) -> Self {
        let Tree { entries: root } = Tree::new_root(version, writer, mtime);
        entries.extend(root);
        Tree { entries }
    }

    pub fn root(&self) -> &Entry {
        &self.entries[&Inode::ROOT]
    }

    pub fn root_mut(&mut self) -> &mut Entry {
        self.entries
            .get_mut(&Inode::ROOT)
            .expect("the root entry always exists")
    }

    pub fn get(&self, inode: Inode) -> Option<&Entry> {
        self.entries.get(&inode)
    }

    pub fn child(&self, dir: Inode, name: &str) -> Option<Inode> {
        self.entries
            .get(&dir)
            .filter(|d| d.is_dir())
            .and_then(|d| d.children.get(name).copied())
    }

    /// Resolve a path like `memdb_lookup_path`: empty components are skipped,
    /// `""`, `"."` and `"/"` name the root. Returns (parent, entry); parent is
    /// the last directory looked into (None for the root).
    pub fn lookup(&self, path: &str) -> (Option<Inode>, Option<Inode>) {
        if path.is_empty() || path == "." || path == "/" {
            return (None, Some(Inode::ROOT));
        }
        let mut cur = Inode::ROOT;
        let mut parent = None;
        for name in path.split('/').filter(|n| !n.is_empty()) {
            parent = Some(cur);
            match self.child(cur, name) {
                Some(next) => cur = next,
                None => return (parent, None),
            }
        }
        (parent, Some(cur))
    }

    pub fn lookup_entry(&self, path: &str) -> Option<&Entry> {
        self.lookup(path).1.and_then(|i| self.get(i))
    }

    /// The path of an inode, relative, without leading slash ("" = root).
    pub fn path_of(&self, inode: Inode) -> Option<String> {
        let mut parts = Vec::new();
        let mut cur = inode;
        // The depth is bounded by the number of entries (no cycles: load
        // rejects them and mutations cannot create them).
        for _ in 0..=self.entries.len() {
            if cur == Inode::ROOT {
                parts.reverse();
                return Some(parts.join("/"));
            }
            let e = self.entries.get(&cur)?;
            parts.push(e.name.as_str());
            cur = e.parent;
        }
        None
    }

    /// Insert a new or replaced entry and link it into its parent. The
    /// entry's own `children` are ignored when it replaces an existing one.
    pub fn insert(&mut self, entry: Entry) {
        let (parent, name, inode) = (entry.parent, entry.name.clone(), entry.inode);
        if let Some(old) = self.entries.get_mut(&inode) {
            // A replaced entry keeps its children (mtime of a directory).
            let children = std::mem::take(&mut old.children);
            *old = Entry { children, ..entry };
        } else {
            self.entries.insert(inode, entry);
        }
        if let Some(p) = self.entries.get_mut(&parent) {
            p.children.insert(name, inode);
        }
    }

    /// Unlink and remove an entry (which must have no children).
    pub fn remove(&mut self, inode: Inode) -> Option<Entry> {
        let e = self.entries.remove(&inode)?;
        if let Some(p) = self.entries.get_mut(&e.parent) {
            if p.children.get(&e.name) == Some(&inode) {
                p.children.remove(&e.name);
            }
        }
        Some(e)
    }

    /// Detach an entry from its parent's children map (for a rename).
    pub fn unlink_name(&mut self, inode: Inode) {
        let Some(e) = self.entries.get(&inode) else {
            return;
        };
        let (parent, name) = (e.parent, e.name.clone());
        if let Some(p) = self.entries.get_mut(&parent) {
            if p.children.get(&name) == Some(&inode) {
                p.children.remove(&name);
            }
        }
    }

    /// Entries sorted by inode (index and checksum order).
    pub fn sorted(&self) -> Vec<&Entry> {
        let mut v: Vec<&Entry> = self.entries.values().collect();
        v.sort_by_key(|e| e.inode);
        v
    }
}

/// What backend.rs and index.rs need from a file's content, whatever its
/// representation: its length and its bytes.
pub(crate) trait Content {
    /// Call `f` with the whole content.
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R;
    /// Up to `size` bytes from `offset` (fewer at the end, none past it).
    fn read_at(&self, offset: u64, size: usize) -> Vec<u8>;
}

impl Content for Vec<u8> {
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self)
    }

    fn read_at(&self, offset: u64, size: usize) -> Vec<u8> {
        let start = offset.min(self.len() as u64) as usize;
        let end = start.saturating_add(size).min(self.len());
        self[start..end].to_vec()
    }
}

/// Files from this size up to [`PACK_MAX`] are held compressed when that
/// saves at least an eighth.
const PACK_MIN: usize = 64;
/// Larger files stay as they are: a read in pieces would decompress the
/// file up to each piece.
const PACK_MAX: usize = 64 * 1024;

/// The content of a file: the bytes as they are, or compressed with
/// [`lz`] (a byte-oriented LZ77, decompressing at memory speed) when
/// that saves at least an eighth. Configuration files are text and
/// shrink two to five times; reads decompress (a 4 KiB file in about a
/// microsecond), writes compress the new content once.
#[derive(Clone, Default)]
pub(crate) struct Data {
    /// The content, or its compressed form when `packed`.
    bytes: Box<[u8]>,
    /// Length of the content.
    len: u32,
    packed: bool,
}

impl Data {
    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held in memory for this content (the compressed size when
    /// packed).
    #[cfg(test)]
    pub fn stored_len(&self) -> usize {
        self.bytes.len()
    }

    /// The whole content.
    pub fn to_vec(&self) -> Vec<u8> {
        self.prefix(self.len())
    }

    /// The first `n` bytes (n <= len).
    fn prefix(&self, n: usize) -> Vec<u8> {
        if !self.packed {
            return self.bytes[..n].to_vec();
        }
        let mut out = Vec::with_capacity(n);
        // Only this module packs, from bytes it checked decompress back.
        let ok = lz::decompress(&self.bytes, n, &mut out);
        debug_assert!(ok, "packed content does not decompress");
        out.resize(n, 0);
        out
    }
}

impl Content for Data {
    fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        if self.packed {
            f(&self.to_vec())
        } else {
            f(&self.bytes)
        }
    }

    fn read_at(&self, offset: u64, size: usize) -> Vec<u8> {
        let len = self.len();
        let start = offset.min(len as u64) as usize;
        let end = start.saturating_add(size).min(len);
        if start == end {
            return Vec::new();
        }
        if !self.packed {
            return self.bytes[start..end].to_vec();
        }
        let mut v = self.prefix(end);
        if start > 0 {
            v.drain(..start);
        }
        v
    }
}

impl From<&[u8]> for Data {
    fn from(content: &[u8]) -> Data {
        let len = content.len() as u32;
        if (PACK_MIN..=PACK_MAX).contains(&content.len()) {
            if let Some(bytes) = lz::compress(content, content.len() - content.len() / 8) {
                return Data {
                    bytes: bytes.into_boxed_slice(),
                    len,
                    packed: true,
                };
            }
        }
        Data {
            bytes: content.into(),
            len,
            packed: false,
        }
    }
}

impl From<Vec<u8>> for Data {
    fn from(content: Vec<u8>) -> Data {
        if (PACK_MIN..=PACK_MAX).contains(&content.len()) {
            return Data::from(&content[..]);
        }
        let len = content.len() as u32;
        Data {
            bytes: content.into_boxed_slice(),
            len,
            packed: false,
        }
    }
}

impl std::fmt::Debug for Data {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Data({} bytes", self.len)?;
        if self.packed {
            write!(f, ", {} packed", self.bytes.len())?;
        }
        write!(f, ")")
    }
}

/// A byte-oriented LZ77 in the manner of LZ4's block format: a sequence
/// is a token byte (literal count in the high nibble, match length - 4 in
/// the low one, 15 = more length bytes follow, each adding up to 255),
/// the literals, a 2-byte little-endian match offset and the further
/// match length bytes. The last sequence has literals only. The content
/// length is kept outside.
mod lz {
    const MIN_MATCH: usize = 4;
    const HASH_BITS: u32 = 12;
    const MAX_OFFSET: usize = u16::MAX as usize;

    fn u32_at(b: &[u8], i: usize) -> u32 {
        u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
    }

    fn hash(v: u32) -> usize {
        (v.wrapping_mul(2_654_435_761) >> (32 - HASH_BITS)) as usize
    }

    fn push_len(out: &mut Vec<u8>, mut n: usize) {
        while n >= 255 {
            out.push(255);
            n -= 255;
        }
        out.push(n as u8);
    }

    fn push_sequence(out: &mut Vec<u8>, literals: &[u8], matched: Option<(usize, usize)>) {
        let ll = literals.len();
        let ml = matched.map_or(0, |(_, len)| len - MIN_MATCH);
        out.push(((ll.min(15) as u8) << 4) | ml.min(15) as u8);
        if ll >= 15 {
            push_len(out, ll - 15);
        }
        out.extend_from_slice(literals);
        if let Some((offset, _)) = matched {
            out.extend_from_slice(&(offset as u16).to_le_bytes());
            if ml >= 15 {
                push_len(out, ml - 15);
            }
        }
    }

    /// Compress `src` (at most 4 GiB); None unless the result is shorter
    /// than `limit` bytes.
    pub fn compress(src: &[u8], limit: usize) -> Option<Vec<u8>> {
        let n = src.len();
        let mut out = Vec::with_capacity(limit.min(n));
        // position + 1 of the last 4-byte group with this hash (0: none)
        let mut table = [0u32; 1 << HASH_BITS];
        let (mut anchor, mut i) = (0usize, 0usize);
        while i + MIN_MATCH <= n {
            let v = u32_at(src, i);
            let h = hash(v);
            let cand = table[h] as usize;
            table[h] = (i + 1) as u32;
            if cand > 0 && i - (cand - 1) <= MAX_OFFSET && u32_at(src, cand - 1) == v {
                let c = cand - 1;
                let mut len = MIN_MATCH;
                while i + len < n && src[c + len] == src[i + len] {
                    len += 1;
                }
                push_sequence(&mut out, &src[anchor..i], Some((i - c, len)));
                if out.len() >= limit {
                    return None;
                }
                i += len;
                anchor = i;
                // remember a position near the end of the match, so the
                // text that follows finds it
                if i >= 2 && i + 2 <= n {
                    table[hash(u32_at(src, i - 2))] = (i - 1) as u32;
                }
                continue;
            }
            i += 1;
        }
        push_sequence(&mut out, &src[anchor..], None);
        if out.len() >= limit {
            return None;
        }
        // a compressed form that does not give back `src` is never kept
        let mut check = Vec::with_capacity(n);
        if !decompress(&out, n, &mut check) || check != src {
            return None;
        }
        out.shrink_to_fit();
        Some(out)
    }

    /// Decompress `src` into `out` (which starts empty) until it holds
    /// `want` bytes or `src` ends. False for malformed input.
    pub fn decompress(src: &[u8], want: usize, out: &mut Vec<u8>) -> bool {
        let mut i = 0usize;
        let more = |i: &mut usize, mut n: usize| -> Option<usize> {
            loop {
                let b = *src.get(*i)?;
                *i += 1;
                n += b as usize;
                if b != 255 {
                    return Some(n);
                }
            }
        };
        while out.len() < want {
            let Some(&token) = src.get(i) else {
                return false;
            };
            i += 1;
            let mut ll = (token >> 4) as usize;
            if ll == 15 {
                match more(&mut i, ll) {
                    Some(n) => ll = n,
                    None => return false,
                }
            }
            let Some(literals) = src.get(i..i.saturating_add(ll)) else {
                return false;
            };
            out.extend_from_slice(literals);
            i += ll;
            if i == src.len() || out.len() >= want {
                break;
            }
            let Some(off) = src.get(i..i + 2) else {
                return false;
            };
            let offset = u16::from_le_bytes([off[0], off[1]]) as usize;
            i += 2;
            let mut ml = (token & 15) as usize;
            if ml == 15 {
                match more(&mut i, ml) {
                    Some(n) => ml = n,
                    None => return false,
                }
            }
            ml += MIN_MATCH;
            if offset == 0 || offset > out.len() {
                return false;
            }
            // Copy from `start`: when the match overlaps what it writes,
            // every copy doubles the repeated pattern.
            let start = out.len() - offset;
            let mut left = ml.min(want.saturating_sub(out.len()));
            while left > 0 {
                let n = (out.len() - start).min(left);
                out.extend_from_within(start..start + n);
                left -= n;
            }
        }
        out.truncate(want);
        out.len() == want
    }
}

#[cfg(test)]
mod data_tests {
    use super::*;

    /// A guest config with snapshot sections, as PVE writes them.
    fn guest_config(vmid: u32, size: usize) -> Vec<u8> {
        let mut s = format!(
            "boot: order=scsi0;net0\ncores: 4\nmemory: 8192\nname: guest-{vmid}\n\
             net0: virtio=BC:24:11:{:02X}:{:02X}:01,bridge=vmbr0\nostype: l26\n\
             scsi0: local-lvm:vm-{vmid}-disk-0,size=32G\nscsihw: virtio-scsi-pci\n\
             smbios1: uuid=6ba7b811-9dad-11d1-80b4-{vmid:012x}\n",
            vmid >> 8,
            vmid & 255
        );
        let mut n = 0;
        while s.len() < size {
            n += 1;
            s += &format!(
                "\n[snap{n}]\nboot: order=scsi0;net0\ncores: {}\nmemory: 8192\n\
                 name: guest-{vmid}\nparent: snap{}\nscsi0: local-lvm:vm-{vmid}-disk-0,size=32G\n\
                 snaptime: {}\nvmstate: local-lvm:vm-{vmid}-state-snap{n}\n",
                2 + n % 3,
                n - 1,
                1_700_000_000 + n * 86_400 + vmid
            );
        }
        s.truncate(size);
        s.into_bytes()
    }

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn check_round_trip(content: &[u8]) -> Data {
        let d = Data::from(content);
        assert_eq!(d.len(), content.len());
        assert_eq!(d.to_vec(), content);
        assert_eq!(Data::from(content.to_vec()).to_vec(), content);
        d.with_bytes(|b| assert_eq!(b, content));
        for (off, size) in [
            (0, 1),
            (0, 4096),
            (1, 10),
            (100, 300),
            (4000, 200),
            (9999, 5),
        ] {
            assert_eq!(
                d.read_at(off, size),
                content.to_vec().read_at(off, size),
                "read_at({off}, {size}) of {} bytes",
                content.len()
            );
        }
        d
    }

    #[test]
    fn configs_shrink_and_read_back() {
        for vmid in [100, 101, 4242] {
            let c = guest_config(vmid, 4096);
            let d = check_round_trip(&c);
            assert!(d.packed, "a guest config is packed");
            assert!(
                d.stored_len() * 2 < c.len(),
                "4 KiB guest config packed to {} bytes",
                d.stored_len()
            );
        }
    }

    #[test]
    fn incompressible_small_and_large_stay_raw() {
        let r = pseudo_random(4096, 7);
        assert!(!check_round_trip(&r).packed);
        assert!(!check_round_trip(b"short").packed);
        assert!(!check_round_trip(&[]).packed);
        let big = vec![b'a'; PACK_MAX + 1];
        assert!(!check_round_trip(&big).packed);
    }

    #[test]
    fn runs_long_matches_and_edges() {
        // overlapping matches (offset 1 and 3), lengths across 15/255 limits
        for n in [64, 65, 79, 80, 270, 271, 4096, 65536] {
            check_round_trip(&vec![b'x'; n]);
            let abc: Vec<u8> = b"abc".iter().copied().cycle().take(n).collect();
            check_round_trip(&abc);
        }
        // long literal runs between matches
        let mut mixed = pseudo_random(300, 3);
        mixed.extend_from_slice(&pseudo_random(300, 3));
        mixed.extend(pseudo_random(1000, 9));
        mixed.extend_from_slice(&mixed.clone()[..700]);
        check_round_trip(&mixed);
    }

    #[test]
    fn random_mixtures_round_trip() {
        let mut seed = 1u64;
        for _ in 0..300 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let n = (seed >> 33) as usize % 9000;
            let noise = pseudo_random(n, seed);
            // mostly text-like: a small alphabet makes matches of every length
            let v: Vec<u8> = noise
                .iter()
                .map(|b| if seed & 4 == 0 { b % 4 + b'a' } else { *b })
                .collect();
            check_round_trip(&v);
        }
    }

    #[test]
    fn malformed_input_is_refused_not_panicking() {
        let c = guest_config(100, 4096);
        let packed = lz::compress(&c, c.len()).expect("compresses");
        for cut in [0, 1, 2, packed.len() / 2, packed.len() - 1] {
            // a cut stream fails, or (cut in the empty last sequence) it
            // still gave everything
            let mut out = Vec::new();
            let ok = lz::decompress(&packed[..cut], c.len(), &mut out);
            assert!(!ok || out == c, "cut {cut} of {}", packed.len());
        }
        let mut out = Vec::new();
        // a match reaching before the start
        assert!(!lz::decompress(&[0x10, b'a', 9, 0], 10, &mut out));
        for seed in 0..200 {
            let junk = pseudo_random(50, seed);
            let mut out = Vec::new();
            let _ = lz::decompress(&junk, 1000, &mut out);
            assert!(out.len() <= 1000);
        }
    }
}
