//! [`MemDb`]: the tree, its SQLite backend, the lock cache and the VM list,
//! with [`MemDb::apply`] as the only write path. Writers are serialized by
//! one mutex and commit to SQLite without blocking readers; readers take a
//! read lock on the in-memory state only.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

use pmxcfs_api_types::{
    now_secs, path_is_lockdir, Errno, FileKind, Inode, Operation, TreeEntry, VmType, BLOCK_SIZE,
    MAX_FILE_SIZE, MAX_FS_SIZE, MAX_INODES,
};

use crate::backend::{Backend, RootRow, RowWrite};
use crate::error::MemDbError;
use crate::index;
use crate::locks::LockCache;
use crate::path::{dir_contains_vm_config, is_bad_name, path_contains_vm_config, split_path};
use crate::tree::{Content, Entry, Tree};
use crate::vmlist::{VmEntry, VmList};

/// Told about changes so that `.version` can count them (status.c
/// `record_memdb_change` / `record_memdb_reload`). Called with the database
/// lock held: implementations must not call back into the database.
pub trait ChangeObserver: Send + Sync {
    /// A mutation touched exactly this path (relative, no leading slash).
    fn path_changed(&self, path: &str);
    /// The whole tree was (re)loaded.
    fn reloaded(&self);
}

/// Metadata of one entry, copied out of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EntryAttr {
    pub inode: Inode,
    pub parent: Inode,
    pub version: u64,
    pub writer: u32,
    pub mtime: u32,
    pub kind: FileKind,
    pub size: u32,
    pub name: String,
    /// Removed from the tree (unlinked or renamed over) while open: only
    /// its handles still reach it (st_nlink 0).
    pub detached: bool,
}

impl EntryAttr {
    fn of(e: &Entry) -> Self {
        EntryAttr {
            inode: e.inode,
            parent: e.parent,
            version: e.version,
            writer: e.writer,
            mtime: e.mtime,
            kind: e.kind,
            size: e.size(),
            name: e.name.clone(),
            detached: false,
        }
    }
}

/// One directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub attr: EntryAttr,
}

/// A database as `pmxcfs --print-index` shows it: the entries in index
/// order, the encoded index (`memdb_encode_index`) and the VERIFY checksum
/// (`memdb_compute_checksum`).
pub struct Inspection {
    pub entries: Vec<TreeEntry>,
    pub index: Vec<u8>,
    pub checksum: [u8; 32],
}

/// Read a database without changing it (its daemon may be running) and
/// with every load check.
pub fn inspect(path: &Path) -> Result<Inspection, MemDbError> {
    if !path.exists() {
        return Err(MemDbError::Inconsistent {
            path: path.to_path_buf(),
            reason: "no such database".into(),
        });
    }
    // SQLite's reader may create the -wal and -shm files of a database in
    // WAL mode: remove them again unless they were there (a running
    // daemon's)
    let side = |ext: &str| {
        let mut p = path.as_os_str().to_owned();
        p.push(ext);
        std::path::PathBuf::from(p)
    };
    let created: Vec<std::path::PathBuf> = ["-wal", "-shm"]
        .iter()
        .map(|e| side(e))
        .filter(|p| !p.exists())
        .collect();
    let loaded = Backend::open_readonly(path);
    let cleanup = || {
        for p in &created {
            // the -shm index always; a -wal only while it is empty
            let is_shm = p.as_os_str().to_string_lossy().ends_with("-shm");
            if std::fs::metadata(p).is_ok_and(|m| is_shm || m.len() == 0) {
                let _ = std::fs::remove_file(p);
            }
        }
    };
    let (backend, tree) = match loaded {
        Ok(x) => x,
        Err(e) => {
            cleanup();
            return Err(e);
        }
    };
    drop(backend);
    cleanup();
    let entries = tree
        .sorted()
        .into_iter()
        .map(Entry::to_tree_entry)
        .collect();
    Ok(Inspection {
        entries,
        index: index::encode_index(&tree),
        checksum: index::compute_checksum(&tree),
    })
}

/// statfs figures (`memdb_statfs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatFs {
    pub bsize: u64,
    pub blocks: u64,
    pub bfree: u64,
    pub files: u64,
    pub ffree: u64,
    pub namemax: u32,
}

/// What only writers touch: the SQLite backend and the write-side caches.
/// Writers are serialized by the mutex around it.
struct Writer {
    backend: Backend,
    /// Set once a database write failed; every later mutation gets EIO.
    errors: bool,
    locks: LockCache,
    /// Truncations answered to open(O_TRUNC) but not yet written, with the
    /// writer that asked. Applied by the first write of the opening handle
    /// (one transaction with it), at its close, or before anything else
    /// observes or changes the file, whichever comes first.
    deferred_trunc: HashMap<Inode, u32>,
}

/// What readers see: changed only by a writer (holding the writer mutex)
/// after its SQLite commit, in one short write-locked step, so a reader
/// never waits for a commit and never sees half a change.
struct State {
    tree: Tree,
    vmlist: VmList,
    /// Open handles per file (FUSE open/create .. release).
    open: HashMap<Inode, usize>,
    /// Files removed from the tree while open: their content, shared by
    /// all their handles until the last is released (POSIX; the C daemon
    /// gets this from libfuse's `.fuse_hidden*` files). Inode numbers are
    /// never reused, so the inode keeps naming it.
    detached: HashMap<Inode, Entry>,
}

impl State {
    /// Remove `inode` from the tree; keep it detached if it is open.
    fn remove(&mut self, inode: Inode) {
        if let Some(e) = self.tree.remove(inode) {
            if self.open.contains_key(&inode) && !e.is_dir() {
                self.detached.insert(inode, e);
            }
        }
    }

    /// An open file's entry: its detached content if it was removed while
    /// open, else the tree's.
    fn file(&self, inode: Inode) -> Option<&Entry> {
        self.detached.get(&inode).or_else(|| self.tree.get(inode))
    }
}

/// The database. Cheap to share behind an `Arc`.
pub struct MemDb {
    writer: Mutex<Writer>,
    state: RwLock<State>,
    /// Number of deferred truncations (readers' fast path: 0, nothing owed).
    deferred: AtomicUsize,
    observer: Option<Arc<dyn ChangeObserver>>,
}

fn normalize(path: &str) -> &str {
    path.trim_start_matches('/')
}

impl MemDb {
    /// Open or create the database, load and validate the tree, rebuild the
    /// VM list and the lock cache (`memdb_open`).
    pub fn open(
        path: &Path,
        observer: Option<Arc<dyn ChangeObserver>>,
    ) -> Result<Self, MemDbError> {
        let (backend, mut tree) = Backend::open(path)?;
        let mut vmlist = VmList::default();
        let dups = rebuild_vmlist(&tree, &mut vmlist);
        if !dups.is_empty() {
            return Err(MemDbError::Inconsistent {
                path: path.to_path_buf(),
                reason: format!("detected duplicate VMID(s) {dups:?}"),
            });
        }
        backend.init(&mut tree)?;
        let mut locks = LockCache::default();
        rebuild_locks(&tree, &mut locks);
        if let Some(o) = &observer {
            o.reloaded();
        }
        tracing::debug!(
            "memdb open '{}' successful (version = {})",
            path.display(),
            tree.root().version
        );
        Ok(MemDb {
            writer: Mutex::new(Writer {
                backend,
                errors: false,
                locks,
                deferred_trunc: HashMap::new(),
            }),
            state: RwLock::new(State {
                tree,
                vmlist,
                open: HashMap::new(),
                detached: HashMap::new(),
            }),
            deferred: AtomicUsize::new(0),
            observer,
        })
    }

    // A panic while holding a lock cannot leave the tree half-changed
    // (mutations are applied after the database commit, as a whole), so a
    // poisoned lock is safe to use.
    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer lock of a database that has not failed (EIO once a
    /// write failed, as every mutation then).
    fn lock_writable(&self) -> Result<MutexGuard<'_, Writer>, Errno> {
        let w = self.lock_writer();
        if w.errors {
            return Err(Errno::EIO);
        }
        Ok(w)
    }

    fn read_state(&self) -> RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_state(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self, path: &str) {
        if let Some(o) = &self.observer {
            o.path_changed(path);
        }
    }

    /// Apply one mutation, as the node `writer` did it at `mtime`. Returns
    /// the byte count for writes and 0 for everything else.
    pub fn apply(&self, op: &Operation, writer: u32, mtime: u32) -> Result<usize, Errno> {
        let mut w = self.lock_writable()?;
        self.apply_settled(&mut w, op, writer, mtime)
    }

    /// [`MemDb::apply`] under the writer lock: a deferred truncation of a
    /// file the operation touches happened before it (its open was
    /// answered first), so it is written first.
    fn apply_settled(
        &self,
        w: &mut Writer,
        op: &Operation,
        writer: u32,
        mtime: u32,
    ) -> Result<usize, Errno> {
        if !w.deferred_trunc.is_empty() {
            self.settle_path(w, op.path())?;
            if let Operation::Rename { to, .. } = op {
                self.settle_path(w, to)?;
            }
        }
        self.apply_locked(w, op, writer, mtime)
    }

    /// open(O_TRUNC) of the file `inode`: the truncation is answered now and
    /// written later, with the first write of the same handle where that
    /// write starts at offset 0 (one transaction: see
    /// [`MemDb::write_inode`] with `after_open_trunc`), else at the handle's close
    /// ([`MemDb::settle_deferred_truncate`]), and in any case before any
    /// read, lookup or change of this file is answered. EIO when the
    /// database has failed (as the truncation itself would).
    pub fn defer_truncate(&self, inode: Inode, writer: u32) -> Result<(), Errno> {
        let mut w = self.lock_writable()?;
        match self.read_state().tree.get(inode) {
            None => return Err(Errno::ENOENT),
            Some(e) if e.is_dir() => return Err(Errno::EISDIR),
            Some(_) => {}
        }
        w.deferred_trunc.insert(inode, writer);
        self.count_deferred(&w);
        Ok(())
    }

    /// Keep the readers' count of deferred truncations in step with the
    /// writer's table (readers skip the writer lock when it is 0).
    fn count_deferred(&self, w: &Writer) {
        self.deferred
            .store(w.deferred_trunc.len(), Ordering::Release);
    }

    /// The first write of a handle opened with O_TRUNC (under the writer
    /// lock): if its truncation is still deferred, the write carries it
    /// (one transaction when the write starts at offset 0); if something
    /// else applied it meanwhile, a plain write, so a write another process
    /// made since is kept.
    fn write_after_trunc_locked(
        &self,
        w: &mut Writer,
        op: &Operation,
        writer: u32,
        mtime: u32,
    ) -> Result<usize, Errno> {
        let Operation::Write {
            path,
            offset,
            data,
            truncate,
        } = op
        else {
            return self.apply_settled(w, op, writer, mtime);
        };
        let inode = self.read_state().tree.lookup(normalize(path)).1;
        let pending = inode.and_then(|i| w.deferred_trunc.remove(&i).map(|tw| (i, tw)));
        self.count_deferred(w);
        let Some((inode, twriter)) = pending else {
            return self.apply_locked(w, op, writer, mtime);
        };
        let res = if *offset == 0 {
            let merged = Operation::Write {
                path: path.clone(),
                offset: 0,
                data: data.clone(),
                truncate: true,
            };
            self.apply_locked(w, &merged, writer, mtime)
        } else {
            self.apply_locked(w, &Self::truncation(path), twriter, mtime)
                .and_then(|_| {
                    let rest = Operation::Write {
                        path: path.clone(),
                        offset: *offset,
                        data: data.clone(),
                        truncate: *truncate,
                    };
                    self.apply_locked(w, &rest, writer, mtime)
                })
        };
        if res.is_err() && self.read_state().tree.get(inode).is_some() {
            // not written: still owed, and the close reports it
            w.deferred_trunc.entry(inode).or_insert(twriter);
            self.count_deferred(w);
        }
        res
    }

    /// Write a deferred truncation of `inode` now, if it is still owed
    /// (close or fsync of the handle that opened with O_TRUNC).
    pub fn settle_deferred_truncate(&self, inode: Inode) -> Result<(), Errno> {
        if self.deferred.load(Ordering::Acquire) == 0 {
            return Ok(());
        }
        let mut w = self.lock_writer();
        self.settle_inode(&mut w, inode)
    }

    /// A handle is opened on the file `inode` (FUSE open or create): while
    /// any is open, removing the file from the tree keeps it detached for
    /// them. ENOENT if it is gone.
    pub fn open_file(&self, inode: Inode) -> Result<(), Errno> {
        let mut st = self.write_state();
        if st.file(inode).is_none() {
            return Err(Errno::ENOENT);
        }
        *st.open.entry(inode).or_insert(0) += 1;
        Ok(())
    }

    /// A handle of `inode` is released; the last one drops a detached file.
    pub fn release_file(&self, inode: Inode) {
        let mut st = self.write_state();
        if let Some(n) = st.open.get_mut(&inode) {
            *n -= 1;
            if *n == 0 {
                st.open.remove(&inode);
                st.detached.remove(&inode);
            }
        }
    }

    /// A write through an open handle of the file `inode`: to the file
    /// wherever it is in the tree now (resolved and applied under the
    /// writer lock, so a concurrent rename cannot redirect it), or, once
    /// detached, to the detached content (in memory only: nobody else can
    /// see it). `after_open_trunc`: the handle's first write after
    /// open(O_TRUNC) (see [`MemDb::defer_truncate`]). An empty
    /// write with `truncate` is a truncation (ftruncate).
    #[allow(clippy::too_many_arguments)]
    pub fn write_inode(
        &self,
        inode: Inode,
        offset: u64,
        data: &[u8],
        truncate: bool,
        after_open_trunc: bool,
        writer: u32,
        mtime: u32,
    ) -> Result<usize, Errno> {
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        if end > MAX_FILE_SIZE {
            return Err(Errno::EFBIG);
        }
        let mut w = self.lock_writer();
        // Detaching happens only under the writer lock: this check holds.
        if self.read_state().detached.contains_key(&inode) {
            let mut st = self.write_state();
            let e = st.detached.get_mut(&inode).ok_or(Errno::ENOENT)?;
            let (offset, end) = (offset as usize, end as usize);
            let mut content = e.data.to_vec();
            if truncate || end > content.len() {
                let keep = if truncate {
                    end
                } else {
                    end.max(content.len())
                };
                content.resize(keep, 0);
            }
            content[offset..end].copy_from_slice(data);
            e.data = content.into();
            return Ok(data.len());
        }
        if w.errors {
            return Err(Errno::EIO);
        }
        let path = self.read_state().tree.path_of(inode).ok_or(Errno::ENOENT)?;
        let op = Operation::Write {
            path,
            offset,
            data: data.to_vec(),
            truncate,
        };
        if after_open_trunc {
            self.write_after_trunc_locked(&mut w, &op, writer, mtime)
        } else {
            self.apply_settled(&mut w, &op, writer, mtime)
        }
    }

    fn truncation(path: &str) -> Operation {
        Operation::Write {
            path: path.to_string(),
            offset: 0,
            data: Vec::new(),
            truncate: true,
        }
    }

    /// Apply the deferred truncation of `inode`, if any.
    fn settle_inode(&self, w: &mut Writer, inode: Inode) -> Result<(), Errno> {
        let Some(&writer) = w.deferred_trunc.get(&inode) else {
            return Ok(());
        };
        let path = self.read_state().tree.path_of(inode);
        let res = match path {
            None => Ok(()),
            Some(path) => self
                .apply_locked(w, &Self::truncation(&path), writer, now_secs())
                .map(|_| ())
                .inspect_err(|e| tracing::error!("deferred truncation of '{path}' failed: {e}")),
        };
        if res.is_ok() {
            w.deferred_trunc.remove(&inode);
            self.count_deferred(w);
        }
        res
    }

    fn settle_path(&self, w: &mut Writer, path: &str) -> Result<(), Errno> {
        let inode = self.read_state().tree.lookup(normalize(path)).1;
        match inode {
            Some(i) => self.settle_inode(w, i),
            None => Ok(()),
        }
    }

    /// Before a read of `inode` is answered: its deferred truncation, if
    /// any, is written (a reader never sees a file older than an answered
    /// open(O_TRUNC)). A failure is logged and the caller of the close
    /// sees it; the reader gets the content as it stands.
    fn settle_for_read(&self, inode: Inode) {
        if self.deferred.load(Ordering::Acquire) != 0 {
            let mut w = self.lock_writer();
            let _ = self.settle_inode(&mut w, inode);
        }
    }

    /// Before a read that sees every file (readdir, statfs, index,
    /// checksum).
    fn settle_all(&self) {
        if self.deferred.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut w = self.lock_writer();
        let owed: Vec<Inode> = w.deferred_trunc.keys().copied().collect();
        for i in owed {
            let _ = self.settle_inode(&mut w, i);
        }
    }

    fn apply_locked(
        &self,
        w: &mut Writer,
        op: &Operation,
        writer: u32,
        mtime: u32,
    ) -> Result<usize, Errno> {
        match op {
            Operation::Write {
                path,
                offset,
                data,
                truncate,
            } => self.pwrite(
                w,
                normalize(path),
                writer,
                mtime,
                data,
                *offset,
                *truncate,
                false,
            ),
            Operation::Create { path } => {
                self.pwrite(w, normalize(path), writer, mtime, &[], 0, false, true)
            }
            Operation::Mkdir { path } => self.mkdir(w, normalize(path), writer, mtime),
            Operation::Delete { path } => self.delete(w, normalize(path), writer, mtime),
            Operation::Rename { from, to } => {
                self.rename(w, normalize(from), normalize(to), writer, mtime)
            }
            Operation::Mtime { path, mtime } => self.set_mtime(w, normalize(path), writer, *mtime),
            // Only the lowest node id acts on a request; that decision needs
            // the membership and is made by the cluster layer.
            Operation::UnlockRequest { .. } => Ok(0),
            Operation::Unlock { path, csum } => {
                let path = normalize(path);
                let matches = self.read_state().tree.lookup_entry(path).is_some_and(|e| {
                    e.is_dir() && path_is_lockdir(path) && index::entry_csum(e) == *csum
                });
                if matches {
                    self.delete(w, path, writer, mtime)
                } else {
                    Ok(0)
                }
            }
        }
        .map(|n| n as usize)
    }

    /// Write one change to SQLite (one transaction, the new global version
    /// `version`). Nothing in memory changes here: on success the caller
    /// publishes the change with [`MemDb::publish`].
    fn commit(
        w: &mut Writer,
        version: u64,
        entry: Option<&Entry>,
        delete: Option<Inode>,
        writer: u32,
        mtime: u32,
    ) -> Result<(), Errno> {
        let root = RootRow {
            version,
            writer,
            mtime,
        };
        if let Err(e) = w.backend.write(&RowWrite {
            entry,
            delete,
            root,
        }) {
            tracing::error!("{e}");
            w.errors = true;
            return Err(Errno::EIO);
        }
        Ok(())
    }

    /// Make a committed change visible: the root's version, writer and
    /// mtime and the change itself, in one step for readers.
    fn publish(&self, version: u64, writer: u32, mtime: u32, change: impl FnOnce(&mut State)) {
        let mut st = self.write_state();
        let r = st.tree.root_mut();
        r.version = version;
        r.writer = writer;
        r.mtime = mtime;
        change(&mut st);
    }

    /// Resolve the parent directory of a path for creating/changing `base`.
    fn parent_dir<'a>(tree: &Tree, path: &'a str) -> Result<(Inode, &'a str, &'a str), Errno> {
        let (dirname, base) = split_path(path);
        let parent = tree.lookup(dirname).1.ok_or(Errno::ENOENT)?;
        if !tree.get(parent).is_some_and(|p| p.is_dir()) {
            return Err(Errno::ENOTDIR);
        }
        if is_bad_name(base) {
            return Err(Errno::EACCES);
        }
        Ok((parent, dirname, base))
    }

    #[allow(clippy::too_many_arguments)]
    fn pwrite(
        &self,
        w: &mut Writer,
        path: &str,
        writer: u32,
        mtime: u32,
        data: &[u8],
        offset: u64,
        truncate: bool,
        create: bool,
    ) -> Result<u32, Errno> {
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        if end > MAX_FILE_SIZE {
            return Err(Errno::EFBIG);
        }
        let st = self.read_state();
        let (parent, _, base) = Self::parent_dir(&st.tree, path)?;
        let vm = path_contains_vm_config(path);
        if let Some((node, vmtype, vmid)) = vm {
            if st.vmlist.different_vm_exists(vmtype, vmid, node) {
                return Err(Errno::EEXIST);
            }
        }
        let version = st.tree.root().version + 1;
        let end = end as usize;
        let offset = offset as usize;
        let entry = match st.tree.child(parent, base).and_then(|i| st.tree.get(i)) {
            Some(old) => {
                if old.is_dir() {
                    return Err(Errno::ENOTDIR);
                }
                if create {
                    return Err(Errno::EEXIST);
                }
                let old_size = old.data.len();
                let new_size = if end > old_size || truncate {
                    end
                } else {
                    old_size
                };
                // the old content only where the write leaves some of it
                let mut buf = if offset == 0 && end == new_size {
                    Vec::with_capacity(new_size)
                } else {
                    old.data.read_at(0, new_size)
                };
                buf.resize(new_size, 0);
                buf[offset..end].copy_from_slice(data);
                Entry {
                    version,
                    writer,
                    mtime,
                    data: buf.into(),
                    children: Default::default(),
                    name: old.name.clone(),
                    ..*old
                }
            }
            None => {
                if !create {
                    return Err(Errno::ENOENT);
                }
                let mut buf = vec![0u8; end];
                buf[offset..end].copy_from_slice(data);
                Entry {
                    inode: Inode(version),
                    parent,
                    version,
                    writer,
                    mtime,
                    kind: FileKind::File,
                    name: base.to_string(),
                    data: buf.into(),
                    children: Default::default(),
                }
            }
        };
        drop(st);
        Self::commit(w, version, Some(&entry), None, writer, mtime)?;
        self.publish(version, writer, mtime, |st| {
            st.tree.insert(entry);
            if let Some((node, vmtype, vmid)) = vm {
                st.vmlist.register(vmtype, vmid, node);
            }
        });
        self.changed(path);
        Ok(data.len() as u32)
    }

    fn mkdir(&self, w: &mut Writer, path: &str, writer: u32, mtime: u32) -> Result<u32, Errno> {
        let st = self.read_state();
        let (parent, dirname, base) = Self::parent_dir(&st.tree, path)?;
        if st.tree.child(parent, base).is_some() {
            return Err(Errno::EEXIST);
        }
        let version = st.tree.root().version + 1;
        drop(st);
        let entry = Entry {
            inode: Inode(version),
            parent,
            version,
            writer,
            mtime,
            kind: FileKind::Dir,
            name: base.to_string(),
            data: Default::default(),
            children: Default::default(),
        };
        Self::commit(w, version, Some(&entry), None, writer, mtime)?;
        if dirname == "priv/lock" {
            let csum = index::entry_csum(&entry);
            w.locks.reset(path, &csum, now_secs());
        }
        self.publish(version, writer, mtime, |st| st.tree.insert(entry));
        Ok(0)
    }

    fn delete(&self, w: &mut Writer, path: &str, writer: u32, mtime: u32) -> Result<u32, Errno> {
        let st = self.read_state();
        let (parent, inode) = st.tree.lookup(path);
        let inode = inode.ok_or(Errno::ENOENT)?;
        if parent.is_none() {
            return Err(Errno::EACCES);
        }
        let entry = st.tree.get(inode).ok_or(Errno::ENOENT)?;
        let is_dir = entry.is_dir();
        if is_dir && !entry.children.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        let version = st.tree.root().version + 1;
        drop(st);
        Self::commit(w, version, None, Some(inode), writer, mtime)?;
        if is_dir {
            w.locks.remove(path);
        }
        self.publish(version, writer, mtime, |st| {
            st.remove(inode);
            // Only a file is a guest config (C also unregisters for a
            // directory named like one; see README).
            if !is_dir {
                if let Some((_, _, vmid)) = path_contains_vm_config(path) {
                    st.vmlist.delete(vmid);
                }
            }
        });
        self.changed(path);
        Ok(0)
    }

    fn rename(
        &self,
        w: &mut Writer,
        from: &str,
        to: &str,
        writer: u32,
        mtime: u32,
    ) -> Result<u32, Errno> {
        let st = self.read_state();
        let (from_parent, from_inode) = st.tree.lookup(from);
        let from_inode = from_inode.ok_or(Errno::ENOENT)?;
        if from_parent.is_none() {
            return Err(Errno::EACCES);
        }
        let from_entry = st.tree.get(from_inode).ok_or(Errno::ENOENT)?;
        let from_is_dir = from_entry.is_dir();
        let from_vm = path_contains_vm_config(from);
        let to_vm = if from_is_dir {
            None
        } else {
            path_contains_vm_config(to)
        };
        if let Some((node, vmtype, vmid)) = to_vm {
            if st.vmlist.different_vm_exists(vmtype, vmid, node)
                && from_vm.is_none_or(|(_, _, fv)| fv != vmid)
            {
                return Err(Errno::EEXIST);
            }
        }
        if from_is_dir && path_is_lockdir(from) {
            return Err(Errno::EACCES);
        }
        let (target_dir, base, delete) = match st.tree.lookup(to) {
            (Some(to_parent), Some(to_inode)) => {
                if to_inode == from_inode {
                    return Ok(0);
                }
                let t = st.tree.get(to_inode).ok_or(Errno::ENOENT)?;
                if t.is_dir() && !t.children.is_empty() {
                    return Err(Errno::ENOTEMPTY);
                }
                (to_parent, t.name.clone(), Some(to_inode))
            }
            (None, Some(_)) => return Err(Errno::EACCES), // the root
            (_, None) => {
                let (dirname, base) = split_path(to);
                let dir = st.tree.lookup(dirname).1.ok_or(Errno::ENOENT)?;
                if !st.tree.get(dir).is_some_and(|d| d.is_dir()) {
                    return Err(Errno::ENOTDIR);
                }
                if is_bad_name(base) {
                    return Err(Errno::EACCES);
                }
                (dir, base.to_string(), None)
            }
        };
        // Only empty directories can be renamed (C: unlink_tree_entry).
        if from_is_dir && !from_entry.children.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        let version = st.tree.root().version + 1;
        let entry = Entry {
            parent: target_dir,
            name: base,
            version,
            writer,
            mtime,
            data: from_entry.data.clone(),
            children: Default::default(),
            ..*from_entry
        };
        drop(st);
        Self::commit(w, version, Some(&entry), delete, writer, mtime)?;
        self.publish(version, writer, mtime, |st| {
            if let Some(d) = delete {
                st.remove(d);
            }
            st.tree.unlink_name(from_inode);
            st.tree.insert(entry);
            if !from_is_dir {
                if let Some((_, _, vmid)) = from_vm {
                    st.vmlist.delete(vmid);
                }
                if let Some((node, vmtype, vmid)) = to_vm {
                    st.vmlist.register(vmtype, vmid, node);
                }
            }
        });
        self.changed(from);
        self.changed(to);
        Ok(0)
    }

    fn set_mtime(&self, w: &mut Writer, path: &str, writer: u32, mtime: u32) -> Result<u32, Errno> {
        let st = self.read_state();
        let (parent, dirname, base) = Self::parent_dir(&st.tree, path)?;
        let inode = st.tree.child(parent, base).ok_or(Errno::ENOENT)?;
        let old = st.tree.get(inode).ok_or(Errno::ENOENT)?;
        let is_lock = dirname == "priv/lock" && old.is_dir();
        // utime(0, 0) is the unlock request, so a lock's mtime may only move
        // forward, and only by the node that holds it.
        if is_lock && (mtime < old.mtime || old.writer != writer) {
            return Err(Errno::EACCES);
        }
        let version = st.tree.root().version + 1;
        let entry = Entry {
            version,
            writer,
            mtime,
            name: old.name.clone(),
            data: old.data.clone(),
            children: Default::default(),
            ..*old
        };
        drop(st);
        Self::commit(w, version, Some(&entry), None, writer, mtime)?;
        if is_lock {
            let csum = index::entry_csum(&entry);
            w.locks.reset(path, &csum, now_secs());
        }
        self.publish(version, writer, mtime, |st| st.tree.insert(entry));
        self.changed(path);
        Ok(0)
    }

    // ---- reads: from the in-memory state, never waiting for a commit ----

    pub fn getattr(&self, path: &str) -> Option<EntryAttr> {
        if self.deferred.load(Ordering::Acquire) != 0 {
            let i = self.read_state().tree.lookup(normalize(path)).1?;
            self.settle_for_read(i);
        }
        self.read_state()
            .tree
            .lookup_entry(normalize(path))
            .map(EntryAttr::of)
    }

    /// Attributes of an entry of the tree or of a detached open file.
    pub fn getattr_inode(&self, inode: Inode) -> Option<EntryAttr> {
        self.settle_for_read(inode);
        let st = self.read_state();
        match st.detached.get(&inode) {
            Some(e) => Some(EntryAttr {
                detached: true,
                ..EntryAttr::of(e)
            }),
            None => st.tree.get(inode).map(EntryAttr::of),
        }
    }

    pub fn lookup_child(&self, dir: Inode, name: &str) -> Option<EntryAttr> {
        if self.deferred.load(Ordering::Acquire) != 0 {
            let i = self.read_state().tree.child(dir, name)?;
            self.settle_for_read(i);
        }
        let st = self.read_state();
        let i = st.tree.child(dir, name)?;
        st.tree.get(i).map(EntryAttr::of)
    }

    /// Relative path of an inode (`""` for the root).
    pub fn path_of(&self, inode: Inode) -> Option<String> {
        self.read_state().tree.path_of(inode)
    }

    /// Read up to `size` bytes at `offset` of a file (in the tree or
    /// detached and still open).
    pub fn read_inode(&self, inode: Inode, offset: u64, size: usize) -> Result<Vec<u8>, Errno> {
        self.settle_for_read(inode);
        let st = self.read_state();
        let e = st.file(inode).ok_or(Errno::ENOENT)?;
        if e.is_dir() {
            return Err(Errno::EISDIR);
        }
        Ok(e.data.read_at(offset, size))
    }

    /// The whole content of a file (`memdb_read`); None if missing or a dir.
    pub fn read(&self, path: &str) -> Option<Vec<u8>> {
        if self.deferred.load(Ordering::Acquire) != 0 {
            let i = self.read_state().tree.lookup(normalize(path)).1?;
            self.settle_for_read(i);
        }
        self.read_state()
            .tree
            .lookup_entry(normalize(path))
            .filter(|e| !e.is_dir())
            .map(|e| e.data.to_vec())
    }

    /// The entries of a directory, sorted by name.
    pub fn readdir(&self, dir: Inode) -> Option<Vec<DirEntry>> {
        self.settle_all();
        let st = self.read_state();
        let d = st.tree.get(dir).filter(|d| d.is_dir())?;
        Some(
            d.children
                .iter()
                .filter_map(|(name, i)| {
                    st.tree.get(*i).map(|e| DirEntry {
                        name: name.clone(),
                        attr: EntryAttr::of(e),
                    })
                })
                .collect(),
        )
    }

    pub fn statfs(&self) -> StatFs {
        self.settle_all();
        let st = self.read_state();
        let size: u64 = st.tree.entries.values().map(|e| e.size() as u64).sum();
        let files = st.tree.entries.len() as u64;
        let blocks = MAX_FS_SIZE.div_ceil(BLOCK_SIZE);
        StatFs {
            bsize: BLOCK_SIZE,
            blocks,
            bfree: blocks.saturating_sub(size.div_ceil(BLOCK_SIZE)),
            files: MAX_INODES,
            ffree: MAX_INODES.saturating_sub(files),
            namemax: 256,
        }
    }

    /// The database failed (every mutation EIO; C's `memdb->errors`).
    pub fn failed(&self) -> bool {
        self.lock_writer().errors
    }

    /// The global version (root version).
    pub fn version(&self) -> u64 {
        self.read_state().tree.root().version
    }

    /// `memdb_encode_index`.
    pub fn encode_index(&self) -> Vec<u8> {
        self.settle_all();
        index::encode_index(&self.read_state().tree)
    }

    /// `memdb_compute_checksum` (the VERIFY checksum).
    pub fn compute_checksum(&self) -> [u8; 32] {
        self.settle_all();
        index::compute_checksum(&self.read_state().tree)
    }

    /// `memdb_tree_entry_csum` of the entry at `path`.
    pub fn entry_csum(&self, path: &str) -> Option<[u8; 32]> {
        if self.deferred.load(Ordering::Acquire) != 0 {
            let i = self.read_state().tree.lookup(normalize(path)).1?;
            self.settle_for_read(i);
        }
        self.read_state()
            .tree
            .lookup_entry(normalize(path))
            .map(index::entry_csum)
    }

    /// Is the lock at `path` (with checksum `csum`) older than 120 s on this
    /// node? (`memdb_lock_expired`)
    pub fn lock_expired(&self, path: &str, csum: &[u8; 32]) -> bool {
        self.lock_writer()
            .locks
            .expired(normalize(path), csum, now_secs())
    }

    /// The VM list version and the number of guests.
    pub fn vmlist_version(&self) -> (u64, usize) {
        let st = self.read_state();
        (st.vmlist.version, st.vmlist.len())
    }

    /// The VM list: its version and the entries sorted by VMID.
    pub fn vmlist(&self) -> (u64, Vec<VmEntry>) {
        let st = self.read_state();
        (st.vmlist.version, st.vmlist.sorted())
    }

    /// The entry `inode` (0: the root) as a resync sends it.
    pub fn sync_entry(&self, inode: Inode) -> Option<TreeEntry> {
        self.settle_all();
        let st = self.read_state();
        let e = st.tree.get(inode)?;
        Some(e.to_tree_entry())
    }

    /// Make this database the leader's (`bdb_backend_commit_update`): in
    /// one transaction, delete every inode the leader's index
    /// (`master_index`, as `encode_index` encodes it) lacks, write the
    /// `updates` (the leader's entries that differ here; inode 0 is the
    /// root), reload, and commit only if the reloaded tree encodes exactly
    /// to `master_index`. Then the tree, the VM list and the lock cache are
    /// replaced as a whole (open files that are gone stay detached for
    /// their handles). Any failure rolls back and puts the database in its
    /// failed state, as in C.
    pub fn commit_sync(&self, master_index: &[u8], updates: &[TreeEntry]) -> Result<(), Errno> {
        let mut w = self.lock_writable()?;
        let Some(master) = index::index_inodes(master_index) else {
            tracing::error!("resync: the leader's index is malformed");
            return Err(Errno::EINVAL);
        };
        let master: std::collections::HashSet<u64> = master.into_iter().collect();
        let (deletes, mut root) = {
            let st = self.read_state();
            let deletes: Vec<Inode> = st
                .tree
                .entries
                .keys()
                .filter(|i| **i != Inode::ROOT && !master.contains(&i.0))
                .copied()
                .collect();
            let r = st.tree.root();
            let root = RootRow {
                version: r.version,
                writer: r.writer,
                mtime: r.mtime,
            };
            (deletes, root)
        };
        let mut entries = Vec::with_capacity(updates.len());
        for u in updates {
            if u.inode == Inode::ROOT {
                root = RootRow {
                    version: u.version,
                    writer: u.writer,
                    mtime: u.mtime,
                };
                continue;
            }
            entries.push(Entry {
                inode: u.inode,
                parent: u.parent,
                version: u.version,
                writer: u.writer,
                mtime: u.mtime,
                kind: u.kind,
                name: u.name.clone(),
                data: u.data.as_slice().into(),
                children: Default::default(),
            });
        }
        let accept = |tree: &Tree| {
            if index::encode_index(tree) == master_index {
                Ok(())
            } else {
                Err("new index does not match master index".to_string())
            }
        };
        let tree = match w.backend.commit_sync(&deletes, &entries, root, accept) {
            Ok(tree) => tree,
            Err(e) => {
                tracing::error!("resync failed: {e}");
                w.errors = true;
                return Err(Errno::EIO);
            }
        };
        let mut vmlist = VmList::default();
        let dups = rebuild_vmlist(&tree, &mut vmlist);
        if !dups.is_empty() {
            tracing::error!("resync: duplicate VMID(s) {dups:?}");
            w.errors = true;
        }
        rebuild_locks(&tree, &mut w.locks);
        {
            let mut st = self.write_state();
            let old = std::mem::replace(&mut st.tree, tree);
            // the VM list version goes on counting from the old list
            vmlist.version = vmlist.version.max(st.vmlist.version + 1);
            st.vmlist = vmlist;
            // An open file is gone when the new tree lacks its inode or
            // holds another file there (a diverged node may have used the
            // same inode number for something else): its handles keep it.
            // (Limitation: until they are closed, the detached file also
            // shadows the new one of that number.)
            let open: Vec<Inode> = st.open.keys().copied().collect();
            let mut old = old;
            for i in open {
                let same = |a: &Entry, b: &Entry| {
                    a.parent == b.parent && a.name == b.name && a.kind == b.kind
                };
                let gone = match (old.entries.get(&i), st.tree.get(i)) {
                    (Some(o), Some(n)) => !same(o, n),
                    (Some(_), None) => true,
                    (None, _) => false,
                };
                if gone && !st.detached.contains_key(&i) {
                    if let Some(e) = old.entries.remove(&i).filter(|e| !e.is_dir()) {
                        st.detached.insert(i, e);
                    }
                }
            }
        }
        if let Some(o) = &self.observer {
            o.reloaded();
        }
        if w.errors {
            return Err(Errno::EIO);
        }
        Ok(())
    }

    /// Merge the WAL into the main file (clean shutdown).
    pub fn checkpoint(&self) {
        if let Err(e) = self.lock_writer().backend.checkpoint() {
            tracing::warn!("{e}");
        }
    }
}

/// `memdb_recreate_vmlist`: returns the duplicated VMIDs.
fn rebuild_vmlist(tree: &Tree, vmlist: &mut VmList) -> Vec<u32> {
    let mut found = Vec::new();
    if let Some(nodes) = tree.lookup_entry("nodes").filter(|e| e.is_dir()) {
        for (node_name, node_inode) in &nodes.children {
            let Some(node) = tree.get(*node_inode).filter(|e| e.is_dir()) else {
                continue;
            };
            for vmtype in [VmType::Qemu, VmType::Openvz, VmType::Lxc] {
                let dir = format!("nodes/{node_name}/{}", vmtype.dir_name());
                if dir_contains_vm_config(&dir).is_none() {
                    continue;
                }
                let Some(sub) = node
                    .children
                    .get(vmtype.dir_name())
                    .and_then(|i| tree.get(*i))
                    .filter(|e| e.is_dir())
                else {
                    continue;
                };
                for (name, i) in &sub.children {
                    if tree.get(*i).is_some_and(|e| !e.is_dir()) {
                        if let Some(vmid) = crate::path::name_is_vm_config(name) {
                            found.push((vmtype, vmid, node_name.clone()));
                        }
                    }
                }
            }
        }
    } else {
        // C: without a `nodes` dir the list and its version stay as they are
        return Vec::new();
    }
    vmlist.rebuild(found)
}

/// `memdb_update_locks`: every lock dir, first seen now.
fn rebuild_locks(tree: &Tree, locks: &mut LockCache) {
    let mut found = Vec::new();
    if let Some(dir) = tree.lookup_entry("priv/lock").filter(|e| e.is_dir()) {
        for (name, i) in &dir.children {
            if let Some(e) = tree.get(*i).filter(|e| e.is_dir()) {
                found.push((format!("priv/lock/{name}"), index::entry_csum(e)));
            }
        }
    }
    locks.replace_all(found, now_secs());
}
