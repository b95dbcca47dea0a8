//! The FUSE filesystem: translates kernel requests into memdb reads,
//! [`Operation`]s submitted through [`Submit`], and plugin reads/writes.
//! No logic of its own beyond naming, modes and the plugin overlay
//! (pmxcfs.c fuse ops, cfs-plug-memdb.c, cfs-plug.c).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileType, Filesystem, KernelConfig, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow,
};

use pmxcfs_api_types::{
    path_is_private, Errno, FileKind, Inode, Operation, BLOCK_SIZE, MAX_FILE_SIZE,
};
use pmxcfs_memdb::{EntryAttr, Submit};

use crate::plugins::{Plugin, PluginCtx};

/// FUSE inode of the root.
const ROOT_INO: u64 = fuser::FUSE_ROOT_ID;
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
const FOPEN_DIRECT_IO: u32 = 1;
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

/// An open file: database files are read live; plugin files from the
/// snapshot taken at open.
enum Handle {
    Plugin(Vec<u8>),
    /// A database file or directory. `trunc_owed`: opened with O_TRUNC and
    /// neither written nor flushed through this handle yet; its first write
    /// goes through [`Submit::write_after_open_truncate`] so that the
    /// truncation and the write can be one transaction.
    Db {
        ino: u64,
        trunc_owed: bool,
    },
}

/// The open handles of one database file, by FUSE inode.
#[derive(Default)]
struct OpenFile {
    handles: usize,
    /// Set when the file is unlinked or replaced by a rename while open.
    orphan: Option<Orphan>,
}

/// A file unlinked (or replaced by a rename) while handles were open on
/// it: its content at that moment, one copy shared by all of its handles,
/// still readable and writable through them, as POSIX wants (the C daemon
/// gets this from libfuse's `.fuse_hidden*` files, which show in the tree).
/// Inode numbers are never reused, so the FUSE inode keeps naming it.
struct Orphan {
    attr: FileAttr,
    data: Vec<u8>,
}

/// Plain reads of a byte snapshot.
fn slice_at(data: &[u8], offset: u64, size: u32) -> &[u8] {
    let start = offset.min(data.len() as u64) as usize;
    let end = start.saturating_add(size as usize).min(data.len());
    &data[start..end]
}

pub struct CfsFs {
    submit: Arc<dyn Submit>,
    ctx: PluginCtx,
    gid: u32,
    handles: HashMap<u64, Handle>,
    open: HashMap<u64, OpenFile>,
    next_fh: u64,
}

impl CfsFs {
    pub fn new(submit: Arc<dyn Submit>, ctx: PluginCtx, gid: u32) -> Self {
        CfsFs {
            submit,
            ctx,
            gid,
            handles: HashMap::new(),
            open: HashMap::new(),
            next_fh: 1,
        }
    }

    fn base_attr(&self, ino: u64, kind: FileType, perm: u16, size: u64, mtime: u32) -> FileAttr {
        FileAttr {
            ino,
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
        let path = self.ctx.memdb.path_of(a.inode).unwrap_or_default();
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
        self.base_attr(
            ino_of(Node::Db(a.inode)),
            kind,
            perm,
            u64::from(a.size),
            a.mtime,
        )
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
            Node::Db(i) => self
                .ctx
                .memdb
                .getattr_inode(i)
                .map(|a| self.db_attr(&a))
                .ok_or(Errno::ENOENT),
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
        match self.ctx.memdb.getattr(path) {
            Some(a) => reply.entry(&TTL, &self.db_attr(&a), 0),
            None => reply.error(libc::ENOENT),
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

    fn new_handle(&mut self, h: Handle) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        if let Handle::Db { ino, .. } = h {
            self.open.entry(ino).or_default().handles += 1;
        }
        self.handles.insert(fh, h);
        fh
    }

    fn drop_handle(&mut self, fh: u64) -> Option<Handle> {
        let h = self.handles.remove(&fh)?;
        if let Handle::Db { ino, .. } = h {
            if let Some(f) = self.open.get_mut(&ino) {
                f.handles -= 1;
                if f.handles == 0 {
                    self.open.remove(&ino);
                }
            }
        }
        Some(h)
    }

    fn orphan(&self, ino: u64) -> Option<&Orphan> {
        self.open.get(&ino).and_then(|f| f.orphan.as_ref())
    }

    /// Before removing or replacing the file at `path`: if handles are open
    /// on it, its FUSE inode and an [`Orphan`] of it. One copy, whatever
    /// the number of handles.
    fn open_file_snapshot(&self, path: &str) -> Option<(u64, Orphan)> {
        let a = self
            .ctx
            .memdb
            .getattr(path)
            .filter(|a| a.kind == FileKind::File)?;
        let ino = ino_of(Node::Db(a.inode));
        if !self.open.contains_key(&ino) {
            return None;
        }
        let data = self
            .ctx
            .memdb
            .read_inode(a.inode, 0, MAX_FILE_SIZE as usize)
            .ok()?;
        let attr = self.db_attr(&a);
        Some((ino, Orphan { attr, data }))
    }

    /// The file is gone from the tree: its open handles keep the snapshot.
    fn orphan_handles(&mut self, (ino, orphan): (u64, Orphan)) {
        if let Some(f) = self.open.get_mut(&ino) {
            f.orphan = Some(orphan);
        }
    }

    /// A truncation still owed by handle `fh` (opened with O_TRUNC) is
    /// applied now: close(2) and fsync(2) return only after it.
    fn settle_trunc(&mut self, fh: u64) -> Result<(), Errno> {
        match self.handles.get_mut(&fh) {
            Some(Handle::Db { ino, trunc_owed }) if *trunc_owed => {
                *trunc_owed = false;
                let ino = *ino;
                if self.orphan(ino).is_some() {
                    return Ok(());
                }
                match node_of(ino) {
                    Some(Node::Db(i)) => self.submit.settle_open_truncate(i),
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    fn mutate_path(&self, parent: u64, name: &OsStr) -> Result<String, Errno> {
        match self.child(parent, name)? {
            Target::Path(p) => Ok(p),
            Target::Plugin(_) => Err(Errno::EACCES),
        }
    }
}

enum Target {
    Path(String),
    Plugin(Plugin),
}

impl Filesystem for CfsFs {
    fn init(&mut self, _req: &Request<'_>, config: &mut KernelConfig) -> Result<(), libc::c_int> {
        if let Err(max) = config.set_max_write(MAX_WRITE) {
            let _ = config.set_max_write(max);
        }
        // open(O_TRUNC) arrives as a flag of open, not as a separate
        // setattr, so truncate + first write can be one operation.
        let _ = config.add_capabilities(fuser::consts::FUSE_ATOMIC_O_TRUNC);
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self.child(parent, name) {
            Ok(Target::Plugin(p)) => reply.entry(&Duration::ZERO, &self.plugin_attr(p), 0),
            Ok(Target::Path(path)) => self.entry_reply(&path, reply),
            Err(e) => reply.error(e.0),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        // An unlinked file still open (fstat comes with or without the
        // handle): the shared snapshot.
        if let Some(o) = self.orphan(ino) {
            let size = o.data.len() as u64;
            let attr = FileAttr {
                size,
                blocks: size.div_ceil(BLOCK_SIZE),
                nlink: 0,
                ..o.attr
            };
            return reply.attr(&TTL, &attr);
        }
        match self.attr_of(ino) {
            Ok(a) => {
                let ttl = if ino >= PLUGIN_INO_BASE {
                    Duration::ZERO
                } else {
                    TTL
                };
                reply.attr(&ttl, &a)
            }
            Err(e) => reply.error(e.0),
        }
    }

    fn setattr(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: ReplyAttr,
    ) {
        let node = match node_of(ino) {
            Some(n) => n,
            None => return reply.error(libc::ENOENT),
        };
        // ftruncate of an unlinked file still open: its snapshot
        if let Some(f) = self.open.get_mut(&ino) {
            if let Some(o) = f.orphan.as_mut() {
                if let Some(size) = size {
                    if size > MAX_FILE_SIZE {
                        return reply.error(libc::EFBIG);
                    }
                    o.data.resize(size as usize, 0);
                }
                let size = o.data.len() as u64;
                let attr = FileAttr {
                    size,
                    blocks: size.div_ceil(BLOCK_SIZE),
                    nlink: 0,
                    ..o.attr
                };
                return reply.attr(&TTL, &attr);
            }
        }
        let path = match node {
            Node::Db(i) => self.ctx.memdb.path_of(i),
            Node::Plugin(p) => Some(p.name().to_string()),
        };
        let Some(path) = path else {
            return reply.error(libc::ENOENT);
        };
        // chmod: only the mode the file already has (0600 private, 0640 else)
        if let Some(mode) = mode {
            let allowed = if path_is_private(&path) { 0o600 } else { 0o640 };
            if mode & 0o7777 != allowed {
                return reply.error(libc::EPERM);
            }
        }
        // chown: only to root / www-data (or "no change")
        if uid.is_some_and(|u| u != 0 && u != u32::MAX)
            || gid.is_some_and(|g| g != self.gid && g != u32::MAX)
        {
            return reply.error(libc::EPERM);
        }
        if let Some(size) = size {
            let res = match node {
                Node::Plugin(p) => self.ctx.truncate(p),
                Node::Db(_) => self
                    .submit(Operation::Write {
                        path: path.clone(),
                        offset: size,
                        data: Vec::new(),
                        truncate: true,
                    })
                    .map(|_| ()),
            };
            if let Err(e) = res {
                return reply.error(e.0);
            }
        }
        if atime.is_some() || mtime.is_some() {
            let Node::Db(i) = node else {
                return reply.error(libc::EACCES);
            };
            let m = match mtime {
                Some(TimeOrNow::SpecificTime(t)) => t
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs() as u32)
                    .unwrap_or(0),
                Some(TimeOrNow::Now) => pmxcfs_api_types::now_secs(),
                None => match self.ctx.memdb.getattr_inode(i) {
                    Some(a) => a.mtime,
                    None => return reply.error(libc::ENOENT),
                },
            };
            if let Err(e) = self.submit(Operation::Mtime { path, mtime: m }) {
                return reply.error(e.0);
            }
        }
        // The reply needs fresh attributes; an unlocked (deleted) lock
        // directory answers ENOENT here, as the C daemon's callers see.
        match self.attr_of(ino) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e.0),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match node_of(ino) {
            Some(Node::Plugin(p @ Plugin::Link(_))) => reply.data(&self.ctx.content(p)),
            _ => reply.error(libc::EINVAL),
        }
    }

    fn mknod(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        // A regular file becomes a create, as libfuse does without mknod.
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(libc::ENOSYS);
        }
        match self.make_entry(parent, name, |path| Operation::Create { path }) {
            Ok(a) => reply.entry(&TTL, &self.db_attr(&a), 0),
            Err(e) => reply.error(e.0),
        }
    }

    fn mkdir(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        match self.make_entry(parent, name, |path| Operation::Mkdir { path }) {
            Ok(a) => reply.entry(&TTL, &self.db_attr(&a), 0),
            Err(e) => reply.error(e.0),
        }
    }

    fn unlink(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let res = self.mutate_path(parent, name).and_then(|path| {
            let snapshot = self.open_file_snapshot(&path);
            self.submit(Operation::Delete { path })?;
            if let Some(snap) = snapshot {
                self.orphan_handles(snap);
            }
            Ok(())
        });
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.0),
        }
    }

    fn rmdir(&mut self, req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        self.unlink(req, parent, name, reply)
    }

    fn symlink(
        &mut self,
        _req: &Request<'_>,
        _parent: u64,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(libc::ENOSYS)
    }

    fn rename(
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        if flags != 0 {
            return reply.error(libc::EINVAL);
        }
        let res = self.mutate_path(parent, name).and_then(|from| {
            let to = self.mutate_path(newparent, newname)?;
            let replaced = self.open_file_snapshot(&to);
            self.submit(Operation::Rename { from, to })?;
            if let Some(snap) = replaced {
                self.orphan_handles(snap);
            }
            Ok(())
        });
        match res {
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e.0),
        }
    }

    fn link(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _newparent: u64,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(libc::EPERM)
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        let trunc = flags & libc::O_TRUNC != 0;
        let handle = match node_of(ino) {
            Some(Node::Plugin(p)) => {
                if trunc {
                    if let Err(e) = self.ctx.truncate(p) {
                        return reply.error(e.0);
                    }
                }
                Handle::Plugin(self.ctx.content(p))
            }
            Some(Node::Db(i)) => match self.ctx.memdb.getattr_inode(i) {
                Some(a) if trunc && a.kind == FileKind::File => {
                    if !self.submit.quorate() {
                        return reply.error(libc::EACCES);
                    }
                    let res = self
                        .path_of_ino(ino)
                        .and_then(|path| self.submit.open_truncate(&path, i));
                    if let Err(e) = res {
                        return reply.error(e.0);
                    }
                    Handle::Db {
                        ino,
                        trunc_owed: true,
                    }
                }
                Some(_) => Handle::Db {
                    ino,
                    trunc_owed: false,
                },
                None => return reply.error(libc::ENOENT),
            },
            None => return reply.error(libc::ENOENT),
        };
        reply.opened(self.new_handle(handle), FOPEN_DIRECT_IO)
    }

    fn read(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyData,
    ) {
        let offset = u64::try_from(offset).unwrap_or(0);
        if let Some(o) = self.orphan(ino) {
            return reply.data(slice_at(&o.data, offset, size));
        }
        match (node_of(ino), self.handles.get(&fh)) {
            (Some(Node::Plugin(_)), Some(Handle::Plugin(data))) => {
                reply.data(slice_at(data, offset, size))
            }
            (Some(Node::Db(i)), _) => match self.ctx.memdb.read_inode(i, offset, size as usize) {
                Ok(d) => reply.data(&d),
                Err(e) => reply.error(e.0),
            },
            _ => reply.error(libc::EBADF),
        }
    }

    fn write(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock_owner: Option<u64>,
        reply: ReplyWrite,
    ) {
        if let Some(Orphan { data: content, .. }) =
            self.open.get_mut(&ino).and_then(|f| f.orphan.as_mut())
        {
            // Only its handles can see this file any more: change the
            // snapshot they share.
            let res = u64::try_from(offset)
                .map_err(|_| Errno::EINVAL)
                .and_then(|offset| match accepted_len(offset, data.len()) {
                    0 if !data.is_empty() => Err(Errno::EFBIG),
                    n => {
                        let start = offset as usize;
                        if content.len() < start + n {
                            content.resize(start + n, 0);
                        }
                        content[start..start + n].copy_from_slice(&data[..n]);
                        Ok(n as u32)
                    }
                });
            return match res {
                Ok(n) => reply.written(n),
                Err(e) => reply.error(e.0),
            };
        }
        let res = match node_of(ino) {
            Some(Node::Plugin(p)) => self.ctx.write(p, offset, data),
            Some(Node::Db(_)) => self.path_of_ino(ino).and_then(|path| {
                let offset = u64::try_from(offset).map_err(|_| Errno::EINVAL)?;
                let data = match accepted_len(offset, data.len()) {
                    0 if !data.is_empty() => return Err(Errno::EFBIG),
                    n => &data[..n],
                };
                let op = Operation::Write {
                    path,
                    offset,
                    data: data.to_vec(),
                    truncate: false,
                };
                match self.handles.get_mut(&fh) {
                    Some(Handle::Db { trunc_owed, .. }) if *trunc_owed => {
                        *trunc_owed = false;
                        self.submit.write_after_open_truncate(op)
                    }
                    _ => self.submit(op),
                }
                .map(|n| n as u32)
            }),
            None => Err(Errno::ENOENT),
        };
        match res {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(e.0),
        }
    }

    fn flush(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _lock_owner: u64,
        reply: ReplyEmpty,
    ) {
        match self.settle_trunc(fh) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.0),
        }
    }

    fn fsync(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Every answered change is committed already; only a truncation
        // still owed by this handle is left to write.
        match self.settle_trunc(fh) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.0),
        }
    }

    fn release(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        fh: u64,
        _flags: i32,
        _lock_owner: Option<u64>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Normally flushed already; a handle released without a flush
        // (the kernel's own) still owes its truncation.
        if let Err(e) = self.settle_trunc(fh) {
            tracing::warn!("truncate at release failed: {e}");
        }
        self.drop_handle(fh);
        reply.ok()
    }

    fn readdir(
        &mut self,
        _req: &Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: ReplyDirectory,
    ) {
        let Some(Node::Db(dir)) = node_of(ino) else {
            return reply.error(libc::ENOTDIR);
        };
        let Some(children) = self.ctx.memdb.readdir(dir) else {
            return reply.error(libc::ENOENT);
        };
        let mut list: Vec<(u64, FileType, String)> = Vec::with_capacity(children.len() + 12);
        list.push((ino, FileType::Directory, ".".into()));
        list.push((ino, FileType::Directory, "..".into()));
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
        let skip = usize::try_from(offset).unwrap_or(0);
        for (i, (ino, kind, name)) in list.into_iter().enumerate().skip(skip) {
            if reply.add(ino, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn statfs(&mut self, _req: &Request<'_>, _ino: u64, reply: ReplyStatfs) {
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
        &mut self,
        _req: &Request<'_>,
        parent: u64,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        match self.make_entry(parent, name, |path| Operation::Create { path }) {
            Ok(a) => {
                let attr = self.db_attr(&a);
                // a real handle, so that it keeps the file if it is unlinked
                let fh = self.new_handle(Handle::Db {
                    ino: attr.ino,
                    trunc_owed: false,
                });
                reply.created(&TTL, &attr, 0, fh, FOPEN_DIRECT_IO)
            }
            Err(e) => reply.error(e.0),
        }
    }

    fn fallocate(
        &mut self,
        _req: &Request<'_>,
        _ino: u64,
        _fh: u64,
        _offset: i64,
        _length: i64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(libc::ENOTSUP)
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
