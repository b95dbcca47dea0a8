//! The in-memory tree: entries by inode, children by name.

use std::collections::{BTreeMap, HashMap};

use pmxcfs_api_types::{FileKind, Inode};

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
    pub data: Vec<u8>,
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
            data: Vec::new(),
            children: BTreeMap::new(),
        };
        let mut entries = HashMap::new();
        entries.insert(Inode::ROOT, root);
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
