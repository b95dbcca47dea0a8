"""config.db helpers: the C schema, building (corrupt) DBs, and a Python
re-implementation of the checks of the C loader (database.c
`bdb_backend_load_index`), so a DB written by our daemon can be judged by the
rules the C daemon applies when it loads it, plus the further checks of our
loader (pmxcfs-memdb backend.rs): a `__version__` row whose version is not
below any inode or version of the tree, inodes in 1..MAX_INODE, and names
that a path can reach (not `.` or `..`, no `/`, no NUL)."""

import os
import re
import shutil
import sqlite3
import tempfile
import time

DT_DIR = 4
DT_REG = 8
VERSIONFILENAME = "__version__"
# The largest inode: FUSE shows inode i as i + 1, and 2^62 and up are the
# plugin entries of the root (pmxcfs/src/fs.rs PLUGIN_INO_BASE).
MAX_INODE = (1 << 62) - 2

# COMPAT.md section 4 / database.c sql_create_db, byte for byte; sqlite_master
# keeps it as SCHEMA_SQL (without IF NOT EXISTS and the ";")
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS tree ("
    "  inode INTEGER PRIMARY KEY NOT NULL,"
    "  parent INTEGER NOT NULL CHECK(typeof(parent)=='integer'),"
    "  version INTEGER NOT NULL CHECK(typeof(version)=='integer'),"
    "  writer INTEGER NOT NULL CHECK(typeof(writer)=='integer'),"
    "  mtime INTEGER NOT NULL CHECK(typeof(mtime)=='integer'),"
    "  type INTEGER NOT NULL CHECK(typeof(type)=='integer'),"
    "  name TEXT NOT NULL,"
    "  data BLOB);"
)
SCHEMA_SQL = SCHEMA.replace("CREATE TABLE IF NOT EXISTS", "CREATE TABLE").rstrip(";")


def _norm_sql(s):
    s = re.sub(r"\s+", "", s or "").lower().rstrip(";")
    return s.replace("createtableifnotexists", "createtable")


EXPECTED_SQL = _norm_sql(SCHEMA)


class Row:
    __slots__ = ("inode", "parent", "version", "writer", "mtime", "type", "name", "data")

    def __init__(self, inode, parent, version, writer, mtime, type, name, data):
        self.inode, self.parent, self.version, self.writer = inode, parent, version, writer
        self.mtime, self.type, self.name, self.data = mtime, type, name, data

    def astuple(self):
        return (self.inode, self.parent, self.version, self.writer, self.mtime, self.type, self.name, self.data)

    def __repr__(self):
        d = self.data
        ds = "NULL" if d is None else f"{len(d)}B"
        return f"Row(inode={self.inode}, parent={self.parent}, v={self.version}, w={self.writer}, mtime={self.mtime}, type={self.type}, name={self.name!r}, data={ds})"


def make_db(path, rows, version=None, wal=True, mtime=None):
    """Create a DB with the C schema. rows: (inode, parent, version, writer,
    mtime, type, name, data). A `__version__` row is added unless version is
    False. The DB is left in WAL mode (as the C daemon leaves it) and cleanly
    closed, so opening it must not need to change the file."""
    if os.path.exists(path):
        os.unlink(path)
    con = sqlite3.connect(path)
    try:
        if wal:
            con.execute("PRAGMA journal_mode=WAL")
        con.execute(SCHEMA)
        mt = int(time.time()) if mtime is None else mtime
        if version is not False:
            v = version if version is not None else max([r[2] for r in rows] + [1])
            con.execute(
                "INSERT INTO tree (inode, parent, version, writer, mtime, type, name, data) VALUES (0, 0, ?, 0, ?, 8, ?, NULL)",
                (v, mt, VERSIONFILENAME),
            )
        for r in rows:
            con.execute(
                "INSERT INTO tree (inode, parent, version, writer, mtime, type, name, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                tuple(r),
            )
        con.commit()
    finally:
        con.close()
    for suffix in ("-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    os.chmod(path, 0o600)


class Snapshot:
    """A read-only look at a DB: copies db (+ -wal) to a temp dir first, so the
    original file is never touched by sqlite."""

    def __init__(self, path):
        self.src = path
        self.dir = tempfile.mkdtemp(prefix="pmxcfs-it-dbsnap-", dir="/tmp")
        self.path = os.path.join(self.dir, "config.db")
        shutil.copy2(path, self.path)
        for suffix in ("-wal",):
            if os.path.exists(path + suffix):
                shutil.copy2(path + suffix, self.path + suffix)
        self.con = sqlite3.connect(self.path)
        self.con.text_factory = bytes

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def close(self):
        try:
            self.con.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def journal_mode(self):
        return self.con.execute("PRAGMA journal_mode").fetchone()[0].decode().lower()

    def schema_sql(self):
        r = self.con.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name='tree'").fetchone()
        return r[0].decode() if r and r[0] is not None else None

    def rows(self):
        """All rows, ordered by inode; name decoded (str), data bytes/None."""
        out = []
        for r in self.con.execute(
            "SELECT inode, parent, version, writer, mtime, type, name, data FROM tree ORDER BY inode"
        ):
            name = r[6].decode(errors="surrogateescape") if isinstance(r[6], bytes) else r[6]
            data = r[7]
            if isinstance(data, str):
                data = data.encode()
            out.append(Row(r[0], r[1], r[2], r[3], r[4], r[5], name, data))
        return out

    def raw_rows(self):
        """Rows in table order with sqlite's storage classes (for the loader check)."""
        out = []
        for r in self.con.execute(
            "SELECT inode, parent, version, writer, mtime, type, name, data, "
            "typeof(inode), typeof(parent), typeof(version), typeof(writer), "
            "typeof(mtime), typeof(type), typeof(name), typeof(data) FROM tree"
        ):
            out.append(tuple(r[:8]) + tuple(x.decode() for x in r[8:]))
        return out


def rows_of(path):
    with Snapshot(path) as s:
        return s.rows()


class LoadError(Exception):
    pass


def c_loader_check(path):
    """Apply the rules of the C loader (database.c bdb_create +
    bdb_backend_load_index) plus the schema check. Returns a dict
    {"root_version", "entries": {inode: Row}, "paths": {path: Row}}; raises
    LoadError naming the first problem."""
    with Snapshot(path) as s:
        sql = s.schema_sql()
        if sql is None:
            raise LoadError("no table 'tree'")
        if _norm_sql(sql) != EXPECTED_SQL:
            raise LoadError(f"table 'tree' schema differs from the C schema: {sql!r}")
        mode = s.journal_mode()
        if mode != "wal":
            raise LoadError(f"journal_mode is {mode!r}, expected 'wal'")
        raw = s.raw_rows()

    root = {"inode": 0, "type": DT_DIR, "entries": {}}
    index = {0: root}
    root_version = 0
    have_version_row = False
    rows = {}
    for r in raw:
        inode, parent, version, writer, mtime, typ, name, data = r[:8]
        types = r[8:]
        for col, t in zip(("inode", "parent", "version", "writer", "mtime", "type"), types[:6]):
            if t != "integer":
                raise LoadError(f"inode {inode}: column {col} has storage class {t}")
        # sqlite3_column_text / column_bytes semantics
        if name is None:
            raise LoadError(f"inode has no name (inode = {inode})")
        nameb = name if isinstance(name, bytes) else str(name).encode()
        if len(nameb) == 0:
            raise LoadError(f"inode has no name (inode = {inode})")
        if b"\0" in nameb:
            raise LoadError(f"inode {inode}: name contains NUL")
        if data is None:
            size = 0
        elif isinstance(data, (bytes, bytearray)):
            size = len(data)
        else:
            size = len(str(data).encode())
        t = typ & 255
        if t == DT_REG:
            pass
        elif t == DT_DIR:
            if size:
                raise LoadError(f"directory inode contains data (inode = {inode})")
        else:
            raise LoadError(f"inode has unknown type (inode = {inode}, type = {t})")
        sname = nameb.decode(errors="surrogateescape")
        if inode != 0:
            # our loader's further checks
            if not 1 <= inode <= MAX_INODE:
                raise LoadError(f"inode {inode} is out of range (name = '{sname}')")
            if sname in (".", ".."):
                raise LoadError(f"name is '.' or '..' (inode = {inode})")
            if "/" in sname:
                raise LoadError(f"name contains '/' (inode = {inode}, name = '{sname}')")
        if inode == 0:
            if sname != VERSIONFILENAME:
                raise LoadError(f"root inode has unexpected name '{sname}'")
            root_version = version
            have_version_row = True
            continue
        pte = index.get(parent)
        if pte is None:
            pte = {"inode": parent, "type": 0, "entries": {}}
            index[parent] = pte
        elif pte["type"] not in (DT_DIR, 0):
            raise LoadError(f"parent is not a directory (inode = {inode}, parent = {parent}, name = '{sname}')")
        te = {"inode": inode, "type": t, "entries": None, "name": sname, "parent": parent}
        if t == DT_DIR:
            ph = index.get(inode)
            if ph is not None:
                if ph["type"] != 0:
                    raise LoadError(f"found strange placeholder for inode {inode} ('{sname}')")
                te["entries"] = ph["entries"]
            else:
                te["entries"] = {}
        if sname in pte["entries"]:
            raise LoadError(f"found entry with duplicate name '{sname}' in directory inode {parent}")
        pte["entries"][sname] = te
        index[inode] = te
        rows[inode] = Row(inode, parent, version, writer, mtime, typ, sname,
                          bytes(data) if isinstance(data, (bytes, bytearray)) else data)
    for ino, te in index.items():
        if te["type"] == 0:
            raise LoadError(f"missing directory inode (inode = {ino})")
    if not have_version_row:
        raise LoadError("no __version__ row (inode 0)")
    if not 1 <= root_version < MAX_INODE:
        raise LoadError(f"__version__ version {root_version} is out of range")
    # invariants of memdb.c (every mutation bumps the root version; a new
    # entry's inode is the version at its creation)
    for ino, row in rows.items():
        if row.version > root_version:
            raise LoadError(f"inode {ino} has version {row.version} > root version {root_version}")
        if ino > root_version:
            raise LoadError(f"inode {ino} > root version {root_version}")
    # paths
    paths = {}

    def walk(te, prefix):
        for n, c in te["entries"].items():
            p = f"{prefix}{n}"
            paths[p] = rows[c["inode"]]
            if c["type"] == DT_DIR:
                walk(c, p + "/")

    walk(root, "")
    return {"root_version": root_version, "entries": rows, "paths": paths}
