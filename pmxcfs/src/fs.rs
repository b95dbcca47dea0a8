//! The FUSE filesystem: translates kernel requests into memdb reads,
//! [`Operation`]s submitted through [`Submit`], and plugin reads/writes.
//! No logic of its own beyond naming, modes and the plugin overlay
//! (pmxcfs.c fuse ops, cfs-plug-memdb.c, cfs-plug.c).
//!
//! Requests are served by several threads at once (fuser's multi-threaded
//! session, one cloned /dev/fuse descriptor each): every method takes
//! `&self`. Ordering and atomicity live in memdb (one writer at a time,
//! readers never wait for a commit); the only state here is the table of
//! open handles, behind a mutex held for a map operation at a time.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
    WriteFlags,
};

use pmxcfs_api_types::{
    path_is_private, Errno, FileKind, Inode, Operation, BLOCK_SIZE, MAX_FILE_SIZE,
};
use pmxcfs_memdb::{EntryAttr, Submit};

use crate::plugins::{Plugin, PluginCtx};

/// FUSE inode of the root.
const ROOT_INO: u64 = fuser::INodeNo::ROOT.0;
/// FUSE inodes of plugin entries start here (database inodes are versions,
/// far below this).
const PLUGIN_INO_BASE: u64 = 1 << 62;
/// Attribute and entry cache time, as libfuse's default.
const TTL: Duration = Duration::from_secs(1);
/// Largest write the kernel sends in one request: a whole file, so that a
/// file written with one write(2) is one transaction.
const MAX_WRITE: u32 = MAX_FILE_SIZE as u32;
/// The C daemon gets writes in 128 KiB requests; each that ends past 1 MiB
/// fails on its own (see [`accepted_len`]).
const C_WRITE_CHUNK: usize = 128 * 1024;
/// Longest entry name (the kernel's FUSE_NAME_MAX for the C daemon).
const FUSE_NAME_MAX: usize = 1024;

/// What a FUSE inode refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Db(Inode),
    Plugin(Plugin),
}

fn node_of(ino: u64) -> Option<Node> {
    if ino >= PLUGIN_INO_BASE {
        Plugin::by_index(ino - PLUGIN_INO_BASE).map(Node::Plugin)
    } else {
        ino.checked_sub(1).map(|i| Node::Db(Inode(i)))
    }
}

fn ino_of(node: Node) -> u64 {
    match node {
        Node::Db(i) => i.0 + 1,
        Node::Plugin(p) => PLUGIN_INO_BASE + p.index(),
    }
}

fn ts(secs: u32) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::from(secs))
}

/// Legacy OpenVZ action scripts get the owner's execute bit
/// (cfs-plug-memdb.c `name_is_openvz_script`).
fn name_is_openvz_script(name: &str) -> bool {
    let Some((id, action)) = name.split_once('.') else {
        return false;
    };
    let id_ok = id == "vps"
        || (id
            .as_bytes()
            .first()
            .is_some_and(|c| (b'1'..=b'9').contains(c))
            && id.bytes().all(|c| c.is_ascii_digit()));
    id_ok
        && matches!(
            action,
            "mount" | "umount" | "start" | "stop" | "premount" | "postumount"
        )
}

/// How much of a write of `len` bytes at `offset` the C daemon accepts:
/// the kernel hands it the write in 128 KiB requests from the start and
/// every request that ends past 1 MiB fails with EFBIG, so a write crossing
/// the limit is short (0 bytes accepted means EFBIG).
fn accepted_len(offset: u64, len: usize) -> usize {
    let fits = |end: usize| offset.saturating_add(end as u64) <= MAX_FILE_SIZE;
    if fits(len) {
        return len;
    }
    let mut accepted = 0;
    while accepted < len {
        let end = (accepted + C_WRITE_CHUNK).min(len);
        if !fits(end) {
            break;
        }
        accepted = end;
    }
    accepted
}

/// An open file.
enum Handle {
    /// A plugin file: its content at open.
    Plugin(Arc<Vec<u8>>),
    /// A database file, read live from memdb (also once it is unlinked or
    /// renamed over: memdb keeps it detached while handles are open).
    /// `trunc_owed`: opened with O_TRUNC and neither written nor flushed
    /// through this handle yet, so its first write may carry the
    /// truncation ([`Submit::write_inode`]).
    Db { inode: Inode, trunc_owed: bool },
}

/// Plain reads of a byte snapshot.
fn slice_at(data: &[u8], offset: u64, size: u32) -> &[u8] {
    let start = offset.min(data.len() as u64) as usize;
    let end = start.saturating_add(size as usize).min(data.len());
    &data[start..end]
}

/// Every handle is direct I/O (reads and writes reach the daemon). Only a
/// handle that owes a truncation needs FLUSH at close(2); the others skip
/// that round trip (FOPEN_NOFLUSH, Linux 5.13+; older kernels send it and
/// get an empty answer).
fn open_flags(h: &Handle) -> FopenFlags {
    match h {
        Handle::Db {
            trunc_owed: true, ..
        } => FopenFlags::FOPEN_DIRECT_IO,
        _ => FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH,
    }
}

fn fe(e: Errno) -> fuser::Errno {
    fuser::Errno::from_i32(e.0)
}

struct Handles {
    map: HashMap<u64, Handle>,
    next_fh: u64,
}

pub struct CfsFs {
    submit: Arc<dyn Submit>,
    ctx: PluginCtx,
    gid: u32,
    handles: Mutex<Handles>,
}

impl CfsFs {
    pub fn new(submit: Arc<dyn Submit>, ctx: PluginCtx, gid: u32) -> Self {
        CfsFs {
            submit,
            ctx,
            gid,
            handles: Mutex::new(Handles {
                map: HashMap::new(),
                next_fh: 1,
            }),
        }
    }

    fn handles(&self) -> MutexGuard<'_, Handles> {
        // Map operations cannot be left half done: a poisoned lock is fine.
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn base_attr(&self, ino: u64, kind: FileType, perm: u16, size: u64, mtime: u32) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(BLOCK_SIZE),
            atime: ts(mtime),
            mtime: ts(mtime),
            ctime: ts(mtime),
            crtime: ts(mtime),
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: 0,
            gid: self.gid,
            rdev: 0,
            blksize: BLOCK_SIZE as u32,
            flags: 0,
        }
    }

    /// Mode rules of `cfs_fuse_getattr` applied to a database entry.
    fn db_attr(&self, a: &EntryAttr) -> FileAttr {
        let quorate = self.submit.quorate();
        if a.inode == Inode::ROOT {
            return self.base_attr(ROOT_INO, FileType::Directory, 0o755, 0, 0);
        }
        let path = if a.detached {
            String::new()
        } else {
            self.ctx.memdb.path_of(a.inode).unwrap_or_default()
        };
        let (kind, mut perm) = match a.kind {
            FileKind::Dir => (FileType::Directory, if quorate { 0o777 } else { 0o555 }),
            FileKind::File => {
                let mut p = if quorate { 0o666 } else { 0o444 };
                if name_is_openvz_script(&a.name) {
                    p |= 0o100;
                }
                (FileType::RegularFile, p)
            }
        };
        perm &= if path_is_private(&path) {
            0o700
        } else if kind == FileType::Directory {
            0o755
        } else {
            0o750
        };
        let mut attr = self.base_attr(
            ino_of(Node::Db(a.inode)),
            kind,
            perm,
            u64::from(a.size),
            a.mtime,
        );
        if a.detached {
            attr.nlink = 0;
        }
        attr
    }

    fn plugin_attr(&self, p: Plugin) -> FileAttr {
        let ino = ino_of(Node::Plugin(p));
        let size = self.ctx.content(p).len() as u64;
        let attr = match p {
            Plugin::Link(_) => {
                let perm = if self.submit.quorate() { 0o755 } else { 0o555 };
                self.base_attr(ino, FileType::Symlink, perm, size, 0)
            }
            _ => self.base_attr(ino, FileType::RegularFile, p.file_mode() & 0o750, size, 0),
        };
        // C: cfs-plug-func.c and cfs-plug-link.c getattr set no st_blocks
        FileAttr { blocks: 0, ..attr }
    }

    fn attr_of(&self, ino: u64) -> Result<FileAttr, Errno> {
        match node_of(ino).ok_or(Errno::ENOENT)? {
            Node::Plugin(p) => Ok(self.plugin_attr(p)),
            Node::Db(i) => {
                self.submit.before_read(i);
                self.ctx
                    .memdb
                    .getattr_inode(i)
                    .map(|a| self.db_attr(&a))
                    .ok_or(Errno::ENOENT)
            }
        }
    }

    /// The relative path of `name` in directory `parent`, or the plugin it
    /// names. Errors as `find_plug` would give them.
    fn child(&self, parent: u64, name: &OsStr) -> Result<Target, Errno> {
        // The kernel gives the C daemon names up to FUSE_NAME_MAX only;
        // newer kernels let longer ones through to us.
        if name.len() > FUSE_NAME_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        match node_of(parent) {
            Some(Node::Db(Inode::ROOT)) => {
                if let Some(p) = Plugin::by_name(name) {
                    return Ok(Target::Plugin(p));
                }
                Ok(Target::Path(name.to_string()))
            }
            Some(Node::Db(dir)) => {
                let base = self.ctx.memdb.path_of(dir).ok_or(Errno::ENOENT)?;
                Ok(Target::Path(format!("{base}/{name}")))
            }
            _ => Err(Errno::ENOENT),
        }
    }

    /// The path of a database inode; plugins have none (EACCES for
    /// mutations, as `find_plug` leaves no sub path).
    fn path_of_ino(&self, ino: u64) -> Result<String, Errno> {
        match node_of(ino) {
            Some(Node::Db(i)) => self.ctx.memdb.path_of(i).ok_or(Errno::ENOENT),
            Some(Node::Plugin(_)) => Err(Errno::EACCES),
            None => Err(Errno::ENOENT),
        }
    }

    fn submit(&self, op: Operation) -> Result<usize, Errno> {
        self.submit.submit(op)
    }

    fn entry_reply(&self, path: &str, reply: ReplyEntry) {
        let mut attr = self.ctx.memdb.getattr(path);
        if attr
            .as_ref()
            .is_some_and(|a| self.submit.before_read(a.inode))
        {
            attr = self.ctx.memdb.getattr(path);
        }
        match attr {
            Some(a) => reply.entry(&TTL, &self.db_attr(&a), Generation(0)),
            None => reply.error(fuser::Errno::ENOENT),
        }
    }

    /// mknod/mkdir/create: submit the operation for `name` in `parent` and
    /// return the new entry.
    fn make_entry(
        &self,
        parent: u64,
        name: &OsStr,
        op: impl FnOnce(String) -> Operation,
    ) -> Result<EntryAttr, Errno> {
        let path = self.mutate_path(parent, name)?;
        self.submit(op(path.clone()))?;
        self.ctx.memdb.getattr(&path).ok_or(Errno::ENOENT)
    }

    fn new_handle(&self, h: Handle) -> u64 {
        let mut hs = self.handles();
        let fh = hs.next_fh;
        hs.next_fh += 1;
        hs.map.insert(fh, h);
        fh
    }

    /// A truncation still owed by handle `fh` (opened with O_TRUNC) is
    /// applied now: close(2) and fsync(2) return only after it.
    fn settle_trunc(&self, fh: u64) -> Result<(), Errno> {
        let owed = match self.handles().map.get_mut(&fh) {
            Some(Handle::Db { inode, trunc_owed }) if *trunc_owed => {
                *trunc_owed = false;
                Some(*inode)
            }
            _ => None,
        };
        match owed {
            Some(inode) => self.submit.settle_open_truncate(inode),
            None => Ok(()),
        }
    }

    /// Take the handle's "first write after O_TRUNC" mark.
    fn take_trunc_owed(&self, fh: u64) -> bool {
        match self.handles().map.get_mut(&fh) {
            Some(Handle::Db { trunc_owed, .. }) => std::mem::take(trunc_owed),
            _ => false,
        }
    }

    fn mutate_path(&self, parent: u64, name: &OsStr) -> Result<String, Errno> {
        match self.child(parent, name)? {
            Target::Path(p) => Ok(p),
            Target::Plugin(_) => Err(Errno::EACCES),
        }
    }

    fn setattr_checks(
        &self,
        path: &str,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<(), Errno> {
        // chmod: only the mode the file already has (0600 private, 0640 else)
        if let Some(mode) = mode {
            let allowed = if path_is_private(path) { 0o600 } else { 0o640 };
            if mode & 0o7777 != allowed {
                return Err(Errno::EPERM);
            }
        }
        // chown: only to root / www-data (or "no change")
        if uid.is_some_and(|u| u != 0 && u != u32::MAX)
            || gid.is_some_and(|g| g != self.gid && g != u32::MAX)
        {
            return Err(Errno::EPERM);
        }
        Ok(())
    }
}

enum Target {
    Path(String),
    Plugin(Plugin),
}

impl Filesystem for CfsFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        if let Err(max) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(max);
        }
        // open(O_TRUNC) arrives as a flag of open, not as a separate
        // setattr, so truncate + first write can be one operation.
        let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent.0, name) {
            Ok(Target::Plugin(p)) => {
                reply.entry(&Duration::ZERO, &self.plugin_attr(p), Generation(0))
            }
            Ok(Target::Path(path)) => self.entry_reply(&path, reply),
            Err(e) => reply.error(fe(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(ino.0) {
            Ok(a) => {
                let ttl = if ino.0 >= PLUGIN_INO_BASE {
                    Duration::ZERO
                } else {
                    TTL
                };
                reply.attr(&ttl, &a)
            }
            Err(e) => reply.error(fe(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let res = (|| {
            let node = node_of(ino.0).ok_or(Errno::ENOENT)?;
            let attr = match node {
                Node::Db(i) => self.ctx.memdb.getattr_inode(i).ok_or(Errno::ENOENT)?,
                Node::Plugin(p) => {
                    self.setattr_checks(p.name(), mode, uid, gid)?;
                    if size.is_some() {
                        self.ctx.truncate(p)?;
                    }
                    if atime.is_some() || mtime.is_some() {
                        return Err(Errno::EACCES);
                    }
                    return Ok(());
                }
            };
            let path = if attr.detached {
                String::new()
            } else {
                self.ctx.memdb.path_of(attr.inode).ok_or(Errno::ENOENT)?
            };
            self.setattr_checks(&path, mode, uid, gid)?;
            if let Some(size) = size {
                // through the inode, so that an open file's truncate reaches
                // it also once it was unlinked or renamed over
                self.submit
                    .write_inode(attr.inode, size, &[], true, false)?;
            }
            if (atime.is_some() || mtime.is_some()) && !attr.detached {
                let m = match mtime {
                    Some(TimeOrNow::SpecificTime(t)) => t
                        .duration_since(UNIX_EPOCH)
                        .map(|d| d.as_secs() as u32)
                        .unwrap_or(0),
                    Some(TimeOrNow::Now) => pmxcfs_api_types::now_secs(),
                    None => attr.mtime,
                };
                self.submit(Operation::Mtime { path, mtime: m })?;
            }
            Ok(())
        })();
        if let Err(e) = res {
            return reply.error(fe(e));
        }
        // The reply needs fresh attributes; an unlocked (deleted) lock
        // directory answers ENOENT here, as the C daemon's callers see.
        match self.attr_of(ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(fe(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match node_of(ino.0) {
            Some(Node::Plugin(p @ Plugin::Link(_))) => reply.data(&self.ctx.content(p)),
            _ => reply.error(fuser::Errno::EINVAL),
        }
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // A regular file becomes a create, as libfuse does without mknod.
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(fuser::Errno::ENOSYS);
        }
        match self.make_entry(parent.0, name, |path| Operation::Create { path }) {
            Ok(a) => reply.entry(&TTL, &self.db_attr(&a), Generation(0)),
            Err(e) => reply.error(fe(e)),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self.make_entry(parent.0, name, |path| Operation::Mkdir { path }) {
            Ok(a) => reply.entry(&TTL, &self.db_attr(&a), Generation(0)),
            Err(e) => reply.error(fe(e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        // An open file stays reachable through its handles: memdb keeps it
        // detached until the last is released.
        let res = self
            .mutate_path(parent.0, name)
            .and_then(|path| self.submit(Operation::Delete { path }));
        match res {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(fe(e)),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.unlink(req, parent, name, reply)
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(fuser::Errno::ENOSYS)
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if !flags.is_empty() {
            return reply.error(fuser::Errno::EINVAL);
        }
        let res = self.mutate_path(parent.0, name).and_then(|from| {
            let to = self.mutate_path(newparent.0, newname)?;
            self.submit(Operation::Rename { from, to })
        });
        match res {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(fe(e)),
        }
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(fuser::Errno::EPERM)
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let trunc = flags.0 & libc::O_TRUNC != 0;
        let res = (|| match node_of(ino.0) {
            Some(Node::Plugin(p)) => {
                if trunc {
                    self.ctx.truncate(p)?;
                }
                Ok(Handle::Plugin(Arc::new(self.ctx.content(p))))
            }
            Some(Node::Db(i)) => {
                self.submit.before_read(i);
                let a = self.ctx.memdb.getattr_inode(i).ok_or(Errno::ENOENT)?;
                let trunc = trunc && a.kind == FileKind::File;
                if trunc && !self.submit.quorate() {
                    return Err(Errno::EACCES);
                }
                self.ctx.memdb.open_file(i)?;
                if trunc {
                    let res = self
                        .path_of_ino(ino.0)
                        .and_then(|path| self.submit.open_truncate(&path, i));
                    if let Err(e) = res {
                        self.ctx.memdb.release_file(i);
                        return Err(e);
                    }
                }
                Ok(Handle::Db {
                    inode: i,
                    trunc_owed: trunc,
                })
            }
            None => Err(Errno::ENOENT),
        })();
        match res {
            Ok(h) => {
                let flags = open_flags(&h);
                reply.opened(FileHandle(self.new_handle(h)), flags)
            }
            Err(e) => reply.error(fe(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match node_of(ino.0) {
            Some(Node::Db(i)) => {
                self.submit.before_read(i);
                match self.ctx.memdb.read_inode(i, offset, size as usize) {
                    Ok(d) => reply.data(&d),
                    Err(e) => reply.error(fe(e)),
                }
            }
            Some(Node::Plugin(_)) => {
                let snapshot = match self.handles().map.get(&fh.0) {
                    Some(Handle::Plugin(data)) => Some(data.clone()),
                    _ => None,
                };
                match snapshot {
                    Some(data) => reply.data(slice_at(&data, offset, size)),
                    None => reply.error(fuser::Errno::EBADF),
                }
            }
            None => reply.error(fuser::Errno::EBADF),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let res = match node_of(ino.0) {
            Some(Node::Plugin(p)) => i64::try_from(offset)
                .map_err(|_| Errno::EINVAL)
                .and_then(|off| self.ctx.write(p, off, data)),
            Some(Node::Db(i)) => {
                let data = match accepted_len(offset, data.len()) {
                    0 if !data.is_empty() => Err(Errno::EFBIG),
                    n => Ok(&data[..n]),
                };
                data.and_then(|data| {
                    let first = self.take_trunc_owed(fh.0);
                    let res = self.submit.write_inode(i, offset, data, false, first);
                    if res.is_err() && first {
                        // still owed: the close applies it and reports
                        if let Some(Handle::Db { trunc_owed, .. }) =
                            self.handles().map.get_mut(&fh.0)
                        {
                            *trunc_owed = true;
                        }
                    }
                    res.map(|n| n as u32)
                })
            }
            None => Err(Errno::ENOENT),
        };
        match res {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(fe(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.settle_trunc(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fe(e)),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Every answered change is committed already; only a truncation
        // still owed by this handle is left to write.
        match self.settle_trunc(fh.0) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(fe(e)),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Normally flushed already; a handle released without a flush
        // (the kernel's own) still owes its truncation.
        if let Err(e) = self.settle_trunc(fh.0) {
            tracing::warn!("truncate at release failed: {e}");
        }
        let h = self.handles().map.remove(&fh.0);
        if let Some(Handle::Db { inode, .. }) = h {
            self.ctx.memdb.release_file(inode);
        }
        reply.ok()
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(Node::Db(dir)) = node_of(ino.0) else {
            return reply.error(fuser::Errno::ENOTDIR);
        };
        let Some(children) = self.ctx.memdb.readdir(dir) else {
            return reply.error(fuser::Errno::ENOENT);
        };
        let mut list: Vec<(u64, FileType, String)> = Vec::with_capacity(children.len() + 12);
        list.push((ino.0, FileType::Directory, ".".into()));
        list.push((ino.0, FileType::Directory, "..".into()));
        if dir == Inode::ROOT {
            for p in crate::plugins::ALL {
                let kind = match p {
                    Plugin::Link(_) => FileType::Symlink,
                    _ => FileType::RegularFile,
                };
                list.push((ino_of(Node::Plugin(p)), kind, p.name().into()));
            }
        }
        for c in children {
            if dir == Inode::ROOT && Plugin::by_name(&c.name).is_some() {
                continue;
            }
            let kind = match c.attr.kind {
                FileKind::Dir => FileType::Directory,
                FileKind::File => FileType::RegularFile,
            };
            list.push((ino_of(Node::Db(c.attr.inode)), kind, c.name));
        }
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (ino, kind, name)) in list.into_iter().enumerate().skip(skip) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let s = self.ctx.memdb.statfs();
        reply.statfs(
            s.blocks,
            s.bfree,
            s.bfree,
            s.files,
            s.ffree,
            s.bsize as u32,
            s.namemax,
            s.bsize as u32,
        )
    }

    // xattr calls are left to fuser's defaults: ENOSYS, which makes the
    // kernel stop asking (no round trip on every open for write) and answer
    // EOPNOTSUPP (= ENOTSUP) itself, what callers of the C daemon see.

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let res = (|| {
            let path = self.mutate_path(parent.0, name)?;
            match self.submit(Operation::Create { path: path.clone() }) {
                Ok(_) => {}
                // open(O_CREAT) without O_EXCL of a file that another node
                // (or process) created since the kernel's lookup: open the
                // existing one, as POSIX wants (C answers EEXIST)
                Err(Errno::EEXIST) if flags & libc::O_EXCL == 0 => {
                    // (EEXIST without such a file: the VMID is another
                    // node's, and stays EEXIST)
                    let mut a = self.ctx.memdb.getattr(&path).ok_or(Errno::EEXIST)?;
                    if self.submit.before_read(a.inode) {
                        a = self.ctx.memdb.getattr(&path).ok_or(Errno::EEXIST)?;
                    }
                    if a.kind != FileKind::File {
                        return Err(Errno::EISDIR);
                    }
                    self.ctx.memdb.open_file(a.inode)?;
                    let trunc = flags & libc::O_TRUNC != 0;
                    if trunc {
                        if let Err(e) = self.submit.open_truncate(&path, a.inode) {
                            self.ctx.memdb.release_file(a.inode);
                            return Err(e);
                        }
                    }
                    return Ok((a, trunc));
                }
                Err(e) => return Err(e),
            }
            let a = self.ctx.memdb.getattr(&path).ok_or(Errno::ENOENT)?;
            // a real handle, so that it keeps the file if it is unlinked
            self.ctx.memdb.open_file(a.inode)?;
            Ok((a, false))
        })();
        match res {
            Ok((a, trunc_owed)) => {
                let attr = self.db_attr(&a);
                let h = Handle::Db {
                    inode: a.inode,
                    trunc_owed,
                };
                let open = open_flags(&h);
                let fh = self.new_handle(h);
                reply.created(&TTL, &attr, Generation(0), FileHandle(fh), open)
            }
            Err(e) => reply.error(fe(e)),
        }
    }

    // isatty(3) on a file asks TCGETS: no ioctl here, as in C (fuser's
    // default would log a warning for every one).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(fuser::Errno::ENOSYS)
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(fuser::Errno::ENOTSUP)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inode_mapping_round_trips() {
        for n in [
            Node::Db(Inode::ROOT),
            Node::Db(Inode(12345)),
            Node::Plugin(Plugin::Debug),
        ] {
            assert_eq!(node_of(ino_of(n)), Some(n));
        }
        assert_eq!(ino_of(Node::Db(Inode::ROOT)), ROOT_INO);
        assert_eq!(node_of(0), None);
        assert_eq!(node_of(PLUGIN_INO_BASE + 99), None);
    }

    #[test]
    fn writes_crossing_the_limit_are_cut_like_c() {
        let mib = MAX_FILE_SIZE as usize;
        assert_eq!(accepted_len(0, mib), mib);
        assert_eq!(accepted_len(0, mib + 1), mib);
        assert_eq!(accepted_len(mib as u64, 1), 0);
        assert_eq!(accepted_len(mib as u64 - 10, 20), 0);
        assert_eq!(accepted_len(100, mib), 7 * C_WRITE_CHUNK);
        assert_eq!(accepted_len(u64::MAX, 1), 0);
        assert_eq!(accepted_len(5, 0), 0);
    }

    #[test]
    fn openvz_scripts() {
        assert!(name_is_openvz_script("100.mount"));
        assert!(name_is_openvz_script("vps.premount"));
        assert!(!name_is_openvz_script("100.conf"));
        assert!(!name_is_openvz_script("0100.mount"));
        assert!(!name_is_openvz_script("mount"));
    }
}
