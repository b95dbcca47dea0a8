//! The SQLite side: schema, pragmas, load with validation, one transaction
//! per mutation (database.c).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OpenFlags};

use pmxcfs_api_types::{FileKind, Inode, DT_REG};

use crate::error::MemDbError;
use crate::tree::{Content, Entry, Tree};

pub(crate) const VERSION_NAME: &str = "__version__";

/// Largest inode a database may hold. The FUSE layer shows inode `i` as
/// `i + 1` and gives the numbers from 2^62 up to the plugin entries of the
/// root (pmxcfs/src/fs.rs `PLUGIN_INO_BASE`), so `i + 1` must stay below.
pub(crate) const MAX_INODE: u64 = (1 << 62) - 2;

/// database.c `sql_create_db`, byte for byte: SQLite keeps this text (less
/// `IF NOT EXISTS` and the `;`) in `sqlite_master`, where C writes two
/// spaces after `(` and after every comma.
pub(crate) const SQL_CREATE: &str = concat!(
    "CREATE TABLE IF NOT EXISTS tree (",
    "  inode INTEGER PRIMARY KEY NOT NULL,",
    "  parent INTEGER NOT NULL CHECK(typeof(parent)=='integer'),",
    "  version INTEGER NOT NULL CHECK(typeof(version)=='integer'),",
    "  writer INTEGER NOT NULL CHECK(typeof(writer)=='integer'),",
    "  mtime INTEGER NOT NULL CHECK(typeof(mtime)=='integer'),",
    "  type INTEGER NOT NULL CHECK(typeof(type)=='integer'),",
    "  name TEXT NOT NULL,",
    "  data BLOB);"
);

const SQL_LOAD: &str = "SELECT inode, parent, version, writer, mtime, type, name, data FROM tree;";
/// Write a row: insert, or update in place when the inode exists. The
/// result is the C daemon's `REPLACE INTO`, but an update whose row keeps
/// its size is written by SQLite over the old cell and overflow pages
/// instead of freeing and reallocating them: an in-place overwrite of a
/// file touches half the pages.
const SQL_WRITE: &str =
    "INSERT INTO tree (inode, parent, version, writer, mtime, type, name, data) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
     ON CONFLICT(inode) DO UPDATE SET parent = excluded.parent, version = excluded.version, \
     writer = excluded.writer, mtime = excluded.mtime, type = excluded.type, \
     name = excluded.name, data = excluded.data;";
const SQL_DELETE: &str = "DELETE FROM tree WHERE inode = ?1;";

/// Page size of the database file. The C daemon uses SQLite's default
/// (4096). Every commit writes each page it touches whole to the WAL, and
/// a mutation touches only small parts of a few pages (the `__version__`
/// row, the entry's leaf, page 1 and the freelist when overflow pages
/// change hands): with 1 KiB pages a create writes half the bytes, a lock
/// cycle a quarter. Page size is invisible to the rows: any SQLite,
/// the C daemon's included, reads the file as before.
pub(crate) const PAGE_SIZE: u32 = 1024;

/// WAL frames (pages) after which a commit checkpoints the WAL into the
/// database file: 4 MiB of WAL at 1 KiB pages, the WAL size of the C
/// daemon's default (1000 frames of 4 KiB). A page changed many times
/// between two checkpoints reaches the database file once.
pub(crate) const WAL_AUTOCHECKPOINT: u32 = 4000;

/// SQLite page cache, KiB. Reads never go to SQLite (the tree is in
/// memory) and a mutation touches a handful of pages, so the cache only
/// has to hold the path from the root to the `__version__` row and to the
/// newest entries; the load reads every page once and needs none.
const CACHE_KIB: u32 = 256;

/// The root fields stored in the `__version__` row.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RootRow {
    pub version: u64,
    pub writer: u32,
    pub mtime: u32,
}

/// What one mutation writes.
pub(crate) struct RowWrite<'a> {
    pub entry: Option<&'a Entry>,
    pub delete: Option<Inode>,
    pub root: RootRow,
}

pub(crate) struct Backend {
    conn: Connection,
    path: PathBuf,
}

impl Backend {
    /// Open (or create) the database and load the tree, writing nothing:
    /// a database that fails a check is left exactly as it was.
    pub fn open(path: &Path) -> Result<(Backend, Tree), MemDbError> {
        Self::open_with(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
    }

    /// Load an existing database read-only (inspection; the daemon of that
    /// node may be running).
    pub fn open_readonly(path: &Path) -> Result<(Backend, Tree), MemDbError> {
        Self::open_with(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
    }

    fn open_with(path: &Path, flags: OpenFlags) -> Result<(Backend, Tree), MemDbError> {
        // the writer gathers each commit's WAL frames into one write
        // (walbuf.rs); without that VFS (never expected) SQLite's own
        let vfs = if flags.contains(OpenFlags::SQLITE_OPEN_READ_WRITE) {
            crate::walbuf::register()
                .map_err(|e| tracing::warn!("WAL write gathering off: {e}"))
                .ok()
                .and_then(|n| n.to_str().ok())
        } else {
            None
        };
        let conn = match vfs {
            Some(vfs) => Connection::open_with_flags_and_vfs(path, flags, vfs),
            None => Connection::open_with_flags(path, flags),
        }
        .map_err(|source| MemDbError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let backend = Backend {
            conn,
            path: path.to_path_buf(),
        };
        backend
            .conn
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| backend.err("set busy timeout", e))?;

        // Probe the file before any write: "file is not a database" shows here.
        let has_table: bool = backend
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='tree'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(|source| MemDbError::NotADatabase {
                path: path.to_path_buf(),
                source,
            })?;

        backend
            .conn
            .execute_batch(&format!("PRAGMA cache_size = -{CACHE_KIB};"))
            .map_err(|e| backend.err("set cache size", e))?;
        let tree = if has_table {
            backend.load()?
        } else {
            Tree::new_root(0, 0, 0)
        };
        Ok((backend, tree))
    }

    /// Make the file ready for writes: mode 0600, [`PAGE_SIZE`] pages, WAL,
    /// synchronous=NORMAL, [`WAL_AUTOCHECKPOINT`], the table, and a
    /// `__version__` row (version 1) for a new database. Called only once
    /// the loaded tree passed every check.
    pub fn init(&self, tree: &mut Tree) -> Result<(), MemDbError> {
        let path = &self.path;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|source| MemDbError::Chmod {
                path: path.to_path_buf(),
                source,
            })?;
        self.set_page_size();
        let mode: String = self
            .conn
            .query_row("PRAGMA journal_mode=WAL;", [], |r| r.get(0))
            .map_err(|e| self.err("set WAL mode", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(MemDbError::Inconsistent {
                path: path.to_path_buf(),
                reason: format!("unable to set WAL mode (got '{mode}')"),
            });
        }
        self.conn
            .execute_batch(&format!(
                "PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT};"
            ))
            .map_err(|e| self.err("set synchronous mode", e))?;
        let created = self
            .conn
            .execute_batch(SQL_CREATE)
            .map_err(|e| self.err("init database", e));
        created.and(self.settle_wal())?;
        if tree.root().version == 0 {
            let root = tree.root_mut();
            root.version = 1;
            root.mtime = pmxcfs_api_types::now_secs();
            let row = RootRow {
                version: root.version,
                writer: root.writer,
                mtime: root.mtime,
            };
            self.write(&RowWrite {
                entry: None,
                delete: None,
                root: row,
            })?;
        }
        release_memory(&self.conn);
        Ok(())
    }

    fn page_size(&self) -> Option<u32> {
        self.conn
            .query_row("PRAGMA page_size;", [], |r| r.get(0))
            .ok()
    }

    /// Bring the file to [`PAGE_SIZE`]: set for a new (empty) file; an
    /// existing one (a database of the C daemon, 4 KiB pages) is rebuilt
    /// once with VACUUM, in rollback-journal mode with synchronous=FULL so
    /// that a crash at any point leaves either the old or the new file,
    /// the same rows in both. A failure is logged and the file is used as
    /// it is: the page size changes bytes written, nothing else.
    fn set_page_size(&self) {
        let Some(old) = self.page_size() else { return };
        if old == PAGE_SIZE {
            return;
        }
        let empty = std::fs::metadata(&self.path).is_ok_and(|m| m.len() == 0);
        let res = if empty {
            self.conn
                .execute_batch(&format!("PRAGMA page_size={PAGE_SIZE};"))
        } else {
            let t0 = std::time::Instant::now();
            let res = self.conn.execute_batch(&format!(
                "PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL; \
                 PRAGMA page_size={PAGE_SIZE}; VACUUM;"
            ));
            if res.is_ok() && self.page_size() == Some(PAGE_SIZE) {
                tracing::info!(
                    "database '{}' rebuilt with {PAGE_SIZE}-byte pages (was {old}) in {} ms",
                    self.path.display(),
                    t0.elapsed().as_millis()
                );
            }
            res
        };
        if let Err(e) = res {
            tracing::warn!(
                "database '{}': cannot change page size {old} to {PAGE_SIZE} ({e}); keeping {old}",
                self.path.display()
            );
        }
    }

    fn err(&self, what: &'static str, source: rusqlite::Error) -> MemDbError {
        MemDbError::Sqlite {
            path: self.path.clone(),
            what,
            source,
        }
    }

    fn bad_row(
        &self,
        inode: u64,
        parent: u64,
        name: &str,
        reason: impl Into<String>,
    ) -> MemDbError {
        MemDbError::BadRow {
            path: self.path.clone(),
            inode,
            parent,
            name: name.to_string(),
            reason: reason.into(),
        }
    }

    /// Load all rows and check them as `bdb_backend_load_index` does, and
    /// further: what the C loader accepts but then breaks the tree (see
    /// [`Backend::check_row`] and [`Backend::check_versions`]).
    fn load(&self) -> Result<Tree, MemDbError> {
        let mut stmt = self
            .conn
            .prepare(SQL_LOAD)
            .map_err(|e| self.err("prepare load", e))?;
        let mut rows = stmt.query([]).map_err(|e| self.err("load", e))?;
        let mut root: Option<(u64, u32, u32)> = None;
        let mut all: HashMap<Inode, Entry> = HashMap::new();
        while let Some(row) = rows.next().map_err(|e| self.err("load", e))? {
            let int = |i: usize| -> Result<i64, MemDbError> {
                match row.get_ref(i).map_err(|e| self.err("load", e))? {
                    ValueRef::Integer(v) => Ok(v),
                    _ => Err(self.err(
                        "load",
                        rusqlite::Error::InvalidColumnType(
                            i,
                            "non-integer".into(),
                            rusqlite::types::Type::Integer,
                        ),
                    )),
                }
            };
            let raw_inode = int(0)?;
            let inode = raw_inode as u64;
            let parent = int(1)? as u64;
            let version = int(2)? as u64;
            // The C loader keeps the low 32 / 8 bits of these columns.
            let writer = (int(3)? & 0xffff_ffff) as u32;
            let mtime = (int(4)? & 0xffff_ffff) as u32;
            let dt = (int(5)? & 0xff) as u8;
            let name_bytes: Vec<u8> = match row.get_ref(6).map_err(|e| self.err("load", e))? {
                ValueRef::Text(t) | ValueRef::Blob(t) => t.to_vec(),
                ValueRef::Null => Vec::new(),
                ValueRef::Integer(i) => i.to_string().into_bytes(),
                ValueRef::Real(f) => f.to_string().into_bytes(),
            };
            // SQLite's buffer: converted once all checks passed, without a
            // copy in between
            let data: &[u8] = match row.get_ref(7).map_err(|e| self.err("load", e))? {
                ValueRef::Blob(b) | ValueRef::Text(b) => b,
                ValueRef::Null => &[],
                _ => return Err(self.bad_row(inode, parent, "", "data is not a blob")),
            };
            let name = match String::from_utf8(name_bytes) {
                Ok(n) => n,
                Err(e) => {
                    let lossy = String::from_utf8_lossy(e.as_bytes()).into_owned();
                    return Err(self.bad_row(inode, parent, &lossy, "name is not valid UTF-8"));
                }
            };
            if name.is_empty() {
                return Err(self.bad_row(inode, parent, &name, "inode has no name"));
            }
            let kind = FileKind::from_dt(dt).ok_or_else(|| {
                self.bad_row(inode, parent, &name, format!("inode has unknown type {dt}"))
            })?;
            if kind == FileKind::Dir && !data.is_empty() {
                return Err(self.bad_row(inode, parent, &name, "directory inode contains data"));
            }
            if data.len() as u64 > pmxcfs_api_types::MAX_FILE_SIZE {
                return Err(self.bad_row(inode, parent, &name, "file is larger than 1 MiB"));
            }
            if inode == 0 {
                if name != VERSION_NAME {
                    return Err(self.bad_row(
                        inode,
                        parent,
                        &name,
                        "root inode has unexpected name",
                    ));
                }
                root = Some((version, writer, mtime));
                continue;
            }
            self.check_row(raw_inode, parent, &name)?;
            let entry = Entry {
                inode: Inode(inode),
                parent: Inode(parent),
                version,
                writer,
                mtime,
                kind,
                name,
                data: data.into(),
                children: BTreeMap::new(),
            };
            all.insert(Inode(inode), entry);
        }
        drop(rows);

        let (version, writer, mtime) = match root {
            Some(r) => r,
            None if all.is_empty() => (0, 0, 0),
            None => {
                return Err(MemDbError::Inconsistent {
                    path: self.path.clone(),
                    reason: format!(
                        "no {VERSION_NAME} row (inode 0) but {} other rows: \
                         new entries would reuse their inodes",
                        all.len()
                    ),
                })
            }
        };
        self.check_versions(version, &all)?;

        // Link children to parents; deterministic order for error messages.
        let mut inodes: Vec<Inode> = all.keys().copied().collect();
        inodes.sort_unstable();
        for inode in &inodes {
            let e = &all[inode];
            let parent_is_dir = if e.parent.0 == 0 {
                true
            } else {
                match all.get(&e.parent) {
                    Some(p) => p.is_dir(),
                    None => {
                        return Err(self.bad_row(
                            e.inode.0,
                            e.parent.0,
                            &e.name,
                            "missing directory inode (parent does not exist)",
                        ))
                    }
                }
            };
            if !parent_is_dir {
                return Err(self.bad_row(
                    e.inode.0,
                    e.parent.0,
                    &e.name,
                    "parent is not a directory",
                ));
            }
        }
        let mut children: HashMap<Inode, BTreeMap<String, Inode>> = HashMap::new();
        for inode in &inodes {
            let e = &all[inode];
            let siblings = children.entry(e.parent).or_default();
            if let Some(other) = siblings.insert(e.name.clone(), e.inode) {
                return Err(self.bad_row(
                    e.inode.0,
                    e.parent.0,
                    &e.name,
                    format!(
                        "found entry with duplicate name (also inode {:016X})",
                        other.0
                    ),
                ));
            }
        }
        drop(inodes);
        // The map of the rows becomes the tree's: no entry is moved again.
        let root_children = children.remove(&Inode::ROOT).unwrap_or_default();
        for (parent, c) in children {
            if let Some(p) = all.get_mut(&parent) {
                p.children = c;
            }
        }
        let mut tree = Tree::with_entries(all, version, writer, mtime);
        tree.root_mut().children = root_children;
        // Every entry must be reachable from the root (no cycles).
        let mut reachable = 0usize;
        let mut stack = vec![Inode::ROOT];
        while let Some(i) = stack.pop() {
            reachable += 1;
            if let Some(e) = tree.entries.get(&i) {
                stack.extend(e.children.values().copied());
            }
        }
        if reachable != tree.entries.len() {
            return Err(MemDbError::Inconsistent {
                path: self.path.clone(),
                reason: format!(
                    "{} entries are not reachable from the root (parent cycle)",
                    tree.entries.len() - reachable
                ),
            });
        }
        Ok(tree)
    }

    /// A row other than `__version__`: its inode must be in
    /// `1..=MAX_INODE` and its name one that a path can reach (not `.` or
    /// `..`, no `/`, no NUL).
    fn check_row(&self, inode: i64, parent: u64, name: &str) -> Result<(), MemDbError> {
        if !(1..=MAX_INODE as i64).contains(&inode) {
            return Err(self.bad_row(
                inode as u64,
                parent,
                name,
                format!(
                    "inode {inode} is out of range (1 to {MAX_INODE}; 0 is only {VERSION_NAME})"
                ),
            ));
        }
        let reason = if name == "." || name == ".." {
            "name is '.' or '..'"
        } else if name.contains('/') {
            "name contains '/'"
        } else if name.contains('\0') {
            "name contains NUL"
        } else {
            return Ok(());
        };
        Err(self.bad_row(inode as u64, parent, &name.replace('\0', "\\0"), reason))
    }

    /// Every new entry's inode is the `__version__` version plus one, so that
    /// version must not be below any inode or version of the tree, and must
    /// leave room for one more inode.
    fn check_versions(&self, root: u64, all: &HashMap<Inode, Entry>) -> Result<(), MemDbError> {
        if all.is_empty() && root == 0 {
            return Ok(());
        }
        if root >= MAX_INODE {
            return Err(self.bad_row(
                0,
                0,
                VERSION_NAME,
                format!(
                    "{VERSION_NAME} version {} is out of range (1 to {})",
                    root as i64,
                    MAX_INODE - 1
                ),
            ));
        }
        let mut inodes: Vec<&Inode> = all.keys().collect();
        inodes.sort_unstable();
        for inode in inodes {
            let e = &all[inode];
            if e.inode.0 > root || e.version > root {
                return Err(self.bad_row(
                    e.inode.0,
                    e.parent.0,
                    &e.name,
                    format!(
                        "{VERSION_NAME} version {root} is lower than this row's inode {} or version {}",
                        e.inode.0, e.version as i64
                    ),
                ));
            }
        }
        Ok(())
    }

    /// One mutation, one transaction: delete the replaced inode, replace the
    /// entry, replace `__version__`. Nothing is kept on error.
    pub fn write(&self, w: &RowWrite<'_>) -> Result<(), MemDbError> {
        self.transaction(|| {
            self.write_rows(w)?;
            self.write_root(&w.root)
        })
    }

    /// `body` in one SQLite transaction, committed if it returns Ok and
    /// rolled back otherwise; either way nothing of it stays gathered in
    /// the WAL afterwards (walbuf.rs: the VFS's contract with its owner).
    fn transaction<T>(
        &self,
        body: impl FnOnce() -> Result<T, MemDbError>,
    ) -> Result<T, MemDbError> {
        let res = (|| {
            let tx = self
                .conn
                .unchecked_transaction()
                .map_err(|e| self.err("begin transaction", e))?;
            let value = body()?;
            tx.commit().map_err(|e| self.err("commit transaction", e))?;
            Ok(value)
        })();
        // the transaction is committed or rolled back (dropped) by now
        let settled = self.settle_wal();
        res.and_then(|value| settled.map(|()| value))
    }

    /// Nothing of a transaction, committed or rolled back, may stay
    /// gathered (walbuf.rs: the VFS's contract with its owner).
    fn settle_wal(&self) -> Result<(), MemDbError> {
        crate::walbuf::settle(&self.conn).map_err(|rc| {
            self.err(
                "write the WAL",
                rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rc), None),
            )
        })
    }

    /// The delete and the entry of one mutation (inside a transaction).
    fn write_rows(&self, w: &RowWrite<'_>) -> Result<(), MemDbError> {
        if let Some(del) = w.delete {
            self.conn
                .prepare_cached(SQL_DELETE)
                .and_then(|mut s| s.execute(params![del.0 as i64]))
                .map_err(|e| self.err("delete inode", e))?;
        }
        if let Some(e) = w.entry {
            let mut replace = self
                .conn
                .prepare_cached(SQL_WRITE)
                .map_err(|e| self.err("prepare write", e))?;
            e.data
                .with_bytes(|bytes| {
                    let data: Option<&[u8]> = if bytes.is_empty() { None } else { Some(bytes) };
                    replace.execute(params![
                        e.inode.0 as i64,
                        e.parent.0 as i64,
                        e.version as i64,
                        e.writer as i64,
                        e.mtime as i64,
                        e.kind.dt() as i64,
                        e.name,
                        data
                    ])
                })
                .map_err(|e| self.err("write inode", e))?;
        }
        Ok(())
    }

    /// The `__version__` row (inside a transaction).
    fn write_root(&self, root: &RootRow) -> Result<(), MemDbError> {
        self.conn
            .prepare_cached(SQL_WRITE)
            .and_then(|mut s| {
                s.execute(params![
                    0i64,
                    0i64,
                    root.version as i64,
                    root.writer as i64,
                    root.mtime as i64,
                    DT_REG as i64,
                    VERSION_NAME,
                    Option::<&[u8]>::None
                ])
            })
            .map_err(|e| self.err("write version", e))?;
        Ok(())
    }

    /// A resync (`bdb_backend_commit_update`): in one transaction delete
    /// `deletes`, write `entries` and the root row, load the whole tree
    /// again (with every load check) and commit only if `accept` takes the
    /// loaded tree; otherwise (or on any error) roll back. Returns the new
    /// tree.
    pub fn commit_sync(
        &self,
        deletes: &[Inode],
        entries: &[Entry],
        root: RootRow,
        accept: impl FnOnce(&Tree) -> Result<(), String>,
    ) -> Result<Tree, MemDbError> {
        self.transaction(|| {
            for &del in deletes {
                self.write_rows(&RowWrite {
                    entry: None,
                    delete: Some(del),
                    root,
                })?;
            }
            for e in entries {
                self.write_rows(&RowWrite {
                    entry: Some(e),
                    delete: None,
                    root,
                })?;
            }
            self.write_root(&root)?;
            let tree = self.load()?;
            // an Err rolls the transaction back
            accept(&tree).map_err(|reason| MemDbError::Inconsistent {
                path: self.path.clone(),
                reason,
            })?;
            Ok(tree)
        })
    }

    /// Merge the WAL into the database file (on clean shutdown).
    pub fn checkpoint(&self) -> Result<(), MemDbError> {
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .map_err(|e| self.err("checkpoint", e))
    }
}

/// After the load: give SQLite's page cache back and return the heap's
/// free pages (the load's temporary maps and row buffers) to the kernel.
fn release_memory(conn: &Connection) {
    let _ = conn.execute_batch("PRAGMA shrink_memory;");
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: glibc's malloc_trim only walks and trims the allocator's
        // own free lists; it has no preconditions.
        unsafe {
            malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pragma(conn: &Connection, name: &str) -> i64 {
        conn.query_row(&format!("PRAGMA {name};"), [], |r| r.get(0))
            .unwrap()
    }

    type Row = (i64, i64, i64, String, Option<Vec<u8>>);

    fn rows(path: &Path) -> Vec<Row> {
        let conn = Connection::open(path).unwrap();
        let mut st = conn
            .prepare("SELECT inode, parent, version, name, data FROM tree ORDER BY inode")
            .unwrap();
        let v = st
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        v
    }

    #[test]
    fn new_database_gets_small_pages_and_wal_settings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.db");
        let (backend, mut tree) = Backend::open(&path).unwrap();
        backend.init(&mut tree).unwrap();
        assert_eq!(pragma(&backend.conn, "page_size"), PAGE_SIZE as i64);
        assert_eq!(
            pragma(&backend.conn, "wal_autocheckpoint"),
            WAL_AUTOCHECKPOINT as i64
        );
        assert_eq!(pragma(&backend.conn, "synchronous"), 1, "NORMAL");
        let mode: String = backend
            .conn
            .query_row("PRAGMA journal_mode;", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn c_database_is_rebuilt_with_small_pages_rows_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.db");
        {
            // as the C daemon leaves it: 4 KiB pages, WAL
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("PRAGMA page_size=4096; PRAGMA journal_mode=WAL;")
                .unwrap();
            conn.execute_batch(SQL_CREATE).unwrap();
            conn.execute(
                "INSERT INTO tree VALUES (0, 0, 40, 0, 1700000000, 8, '__version__', NULL)",
                [],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO tree VALUES (1, 0, 1, 0, 1700000000, 4, 'nodes', NULL)",
                [],
            )
            .unwrap();
            for i in 2..40i64 {
                let data: Vec<u8> = (0..4096 + i).map(|b| (b * i % 251) as u8).collect();
                conn.execute(
                    "INSERT INTO tree VALUES (?1, 1, ?1, 0, 1700000000, 8, ?2, ?3)",
                    params![i, format!("{i}.conf"), data],
                )
                .unwrap();
            }
        }
        let before = rows(&path);
        let (backend, mut tree) = Backend::open(&path).unwrap();
        backend.init(&mut tree).unwrap();
        assert_eq!(pragma(&backend.conn, "page_size"), PAGE_SIZE as i64);
        let mode: String = backend
            .conn
            .query_row("PRAGMA journal_mode;", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert_eq!(rows(&path), before, "rows unchanged by the rebuild");
        drop(backend);
        // and it loads again as it was
        let (_backend, tree2) = Backend::open(&path).unwrap();
        assert_eq!(tree2.entries.len(), tree.entries.len());
        assert_eq!(tree2.root().version, 40);
    }
}
