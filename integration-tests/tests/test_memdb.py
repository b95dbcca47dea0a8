"""memdb: what lands in config.db, and the DB written by the C daemon
(COMPAT.md section 4; checklist item 11; fixture c-9.1.6-local)."""

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import time

from lib import pmxdb
from lib.harness import (
    Daemon,
    TestFailure,
    check,
    eq,
    expect_errno,
    mounted,
    read,
    sha256_file,
    write,
)

# The copy in the repository (integration-tests/fixtures), nothing outside it.
FIXTURE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "c-9.1.6-local")
ROOT_PLUGINS = {".version", ".members", ".vmlist", ".rrd", ".clusterlog", ".debug", "local", "qemu-server", "lxc", "openvz"}


def fixture(name):
    p = os.path.join(FIXTURE_DIR, name)
    if not os.path.exists(p):
        raise TestFailure(f"fixture file {p} not found")
    return p


def loader_check(db):
    try:
        return pmxdb.c_loader_check(db)
    except pmxdb.LoadError as e:
        raise TestFailure(f"the C loader would refuse the DB: {e}")


def by_name(res):
    return res["paths"]


# ---------------------------------------------------------------- item 11


def test_item11_fresh_db_version_row_and_wal(t):
    """item 11: a fresh config.db after start+stop: C schema, only the __version__ row (inode 0, version 1), journal_mode wal."""
    tmp = t.tmpdir()
    t0 = int(time.time())
    with Daemon(tmp) as d:
        check(os.path.exists(d.db), "config.db not created")
    t1 = int(time.time())
    res = loader_check(d.db)
    eq(res["root_version"], 1, "root version of a fresh DB")
    eq(res["entries"], {}, "entries of a fresh DB")
    with pmxdb.Snapshot(d.db) as s:
        eq(s.journal_mode(), "wal", "PRAGMA journal_mode")
        rows = s.rows()
    eq(len(rows), 1, f"rows of a fresh DB: {rows}")
    r = rows[0]
    eq((r.inode, r.parent, r.version, r.writer, r.type, r.name), (0, 0, 1, 0, 8, "__version__"), "__version__ row")
    check(r.data in (None, b""), f"__version__ row data: {r.data!r}")
    check(t0 - 2 <= r.mtime <= t1 + 2, f"__version__ mtime {r.mtime} is not the creation time")


def test_item11_each_mutation_bumps_version_inode_is_creation_version(t):
    """item 11: each mutation +1 on the root version, the touched entry gets it, new inode = version at creation, rename keeps the inode, failed ops change nothing."""
    tmp = t.tmpdir()
    with Daemon(tmp) as d:
        os.mkdir(d.path("a"))  # v2: inode 2
        expect_errno(errno.EEXIST, os.mkdir, d.path("a"), what="mkdir a again")  # no bump
        fd = os.open(d.path("a/f"), os.O_WRONLY | os.O_CREAT, 0o640)  # v3: create, inode 3
        try:
            os.write(fd, b"hello")  # v4
        finally:
            os.close(fd)
        os.rename(d.path("a/f"), d.path("a/g"))  # v5, inode 3
        os.utime(d.path("a/g"), (1, 1700000000))  # v6
        os.mkdir(d.path("b"))  # v7: inode 7
        expect_errno(errno.ENOTEMPTY, os.rmdir, d.path("a"), what="rmdir non-empty a")  # no bump
        t_end = int(time.time())
    res = loader_check(d.db)
    rows = {r.name: r for r in res["entries"].values()}
    eq(res["root_version"], 7, "root version after 6 mutations on a fresh DB")
    eq(sorted(rows), ["a", "b", "g"], "names in the DB")
    a, g, b = rows["a"], rows["g"], rows["b"]
    eq((a.inode, a.parent, a.version, a.type), (2, 0, 2, 4), "row a (inode, parent, version, type)")
    eq((g.inode, g.parent, g.version, g.type, g.mtime, g.data), (3, 2, 6, 8, 1700000000, b"hello"),
       "row g (inode, parent, version, type, mtime, data)")
    eq((b.inode, b.parent, b.version, b.type), (7, 0, 7, 4), "row b (inode, parent, version, type)")
    for r in (a, g, b):
        eq(r.writer, 0, f"writer of {r.name} in local mode")
    check(abs(a.mtime - t_end) <= 5 and abs(b.mtime - t_end) <= 5, "mtime of new dirs is not the current time")
    with pmxdb.Snapshot(d.db) as s:
        vrow = [r for r in s.rows() if r.inode == 0][0]
    check(abs(vrow.mtime - t_end) <= 5, f"__version__ mtime {vrow.mtime} not the time of the last mutation")
    # a delete after a restart: one more bump, row gone
    with Daemon(tmp) as d2:
        os.unlink(d2.path("a/g"))  # v8
    res2 = loader_check(d.db)
    eq(res2["root_version"], 8, "root version after restart + unlink")
    eq(sorted(r.name for r in res2["entries"].values()), ["a", "b"], "names after unlink")


def test_item11_rename_replace_keeps_source_inode(t):
    """item 11: rename onto an existing file keeps the source inode; the replaced inode's row is deleted."""
    tmp = t.tmpdir()
    with Daemon(tmp) as d:
        write(d.path("x"), b"X")  # create v2 (inode 2), write v3
        write(d.path("y"), b"Y")  # create v4 (inode 4), write v5
        st_x = os.stat(d.path("x")).st_ino
        os.rename(d.path("x"), d.path("y"))  # v6
        eq(os.stat(d.path("y")).st_ino, st_x, "st_ino of y after rename x -> y")
    res = loader_check(d.db)
    eq(res["root_version"], 6, "root version")
    eq(set(res["entries"]), {2}, "inodes left (the source's)")
    y = res["entries"][2]
    eq((y.name, y.version, y.data), ("y", 6, b"X"), "row y (name, version, data)")


def test_item11_truncate_and_empty_file_rows(t):
    """item 11: an empty file and an emptied file store NULL/empty data; truncate is one mutation; size is the data length."""
    tmp = t.tmpdir()
    with Daemon(tmp) as d:
        write(d.path("e"), b"")  # create only (no write call): v2
        write(d.path("t"), b"0123456789")  # v3 create, v4 write
        os.truncate(d.path("t"), 4)  # v5
    res = loader_check(d.db)
    rows = {r.name: r for r in res["entries"].values()}
    eq(res["root_version"], 5, "root version")
    check(rows["e"].data in (None, b""), f"empty file data {rows['e'].data!r}")
    eq(rows["t"].data, b"0123", "truncated file data")
    eq(rows["t"].version, 5, "truncated file version")


def test_db_after_workload_passes_c_loader(t):
    """A DB written by our daemon after a mixed workload passes the C loader's checks, and its tree equals what FUSE showed."""
    tmp = t.tmpdir()
    with Daemon(tmp) as d:
        for p in ("nodes/testnode/qemu-server", "nodes/testnode/priv", "priv/lock", "sdn", "firewall", "deep/a/b"):
            d.makedirs(p)
        write(d.path("storage.cfg.tmp.1"), b"dir: local\n")
        os.rename(d.path("storage.cfg.tmp.1"), d.path("storage.cfg"))
        write(d.path("nodes/testnode/qemu-server/100.conf"), b"memory: 512\n")
        write(d.path("deep/a/b/big"), bytes(range(256)) * 4096)
        os.truncate(d.path("deep/a/b/big"), 3000)
        os.rename(d.path("sdn"), d.path("sdn-renamed"))
        os.mkdir(d.path("sdn"))
        os.utime(d.path("firewall"), (1700000000, 1700000000))
        os.mkdir(d.path("priv/lock/held"))
        write(d.path("deep/gone"), b"x")
        os.unlink(d.path("deep/gone"))
        seen = walk_tree(d.mount)
    res = loader_check(d.db)
    db_tree = {}
    for p, r in res["paths"].items():
        if r.type == pmxdb.DT_DIR:
            db_tree[p] = ("dir", r.mtime)
        else:
            data = r.data or b""
            db_tree[p] = ("file", r.mtime, len(data), hashlib.sha256(data).hexdigest())
    fuse_tree = {p: (v[0], v[2]) if v[0] == "dir" else (v[0], v[2], v[3], v[4]) for p, v in seen.items()}
    diff = sorted(set(db_tree.items()) ^ set(fuse_tree.items()))
    check(not diff, f"DB tree differs from the FUSE tree: {diff[:6]}")


# ---------------------------------------------------------------- C fixture


def walk_tree(mount):
    """{relpath: ('dir', mode, mtime) | ('file', mode, mtime, size, sha256)} of
    the DB-backed tree (root plugin entries excluded)."""
    out = {}

    def rec(rel):
        full = os.path.join(mount, rel) if rel else mount
        for name in sorted(os.listdir(full)):
            if not rel and name in ROOT_PLUGINS:
                continue
            r = f"{rel}/{name}" if rel else name
            st = os.lstat(os.path.join(mount, r))
            m = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                out[r] = ("dir", m, int(st.st_mtime))
                rec(r)
            elif stat.S_ISREG(st.st_mode):
                data = read(os.path.join(mount, r))
                if len(data) != st.st_size:
                    raise TestFailure(f"{r}: st_size {st.st_size} but {len(data)} bytes read")
                out[r] = ("file", m, int(st.st_mtime), st.st_size, hashlib.sha256(data).hexdigest())
            else:
                out[r] = ("other", m, int(st.st_mtime))

    rec("")
    return out


def load_manifest():
    out = {}
    with open(fixture("manifest.tsv")) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split("\t")
            if parts[0] == "dir":
                out[parts[1]] = ("dir", int(parts[2], 8), int(parts[3]))
            else:
                out[parts[1]] = ("file", int(parts[2], 8), int(parts[3]), int(parts[4]), parts[5])
    return out


def _fixture_daemon(t):
    tmp = t.tmpdir()
    d = Daemon(tmp, nodename="vm")
    shutil.copyfile(fixture("config.db"), d.db)
    os.chmod(d.db, 0o600)
    return tmp, d


def test_c_fixture_tree_matches_manifest(t):
    """A config.db written by the C daemon loads and shows exactly the manifest tree: every dir/file, mode, mtime, size, sha256, nothing extra."""
    tmp, d0 = _fixture_daemon(t)
    d = t.daemon(tmp, nodename="vm")
    tree = walk_tree(d.mount)
    manifest = load_manifest()
    missing = sorted(set(manifest) - set(tree))
    extra = sorted(set(tree) - set(manifest))
    wrong = sorted(p for p in set(manifest) & set(tree) if manifest[p] != tree[p])
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {missing[:5]}")
    if extra:
        problems.append(f"extra {len(extra)}: {extra[:5]}")
    for p in wrong[:5]:
        problems.append(f"{p}: got {tree[p][:4]}, manifest {manifest[p][:4]}")
    if len(wrong) > 5:
        problems.append(f"... {len(wrong)} entries differ")
    check(not problems, "; ".join(problems))
    eq(sorted(n for n in os.listdir(d.mount) if n in ROOT_PLUGINS), sorted(ROOT_PLUGINS), "plugin entries at the root")
    eq(os.readlink(d.path("local")), "nodes/vm", "local symlink target with --nodename vm")


def test_c_fixture_vmlist_matches(t):
    """.vmlist of the C fixture equals vmlist.json as JSON: same ids with node and type (per-VM versions may be renumbered)."""
    tmp, d0 = _fixture_daemon(t)
    d = t.daemon(tmp, nodename="vm")
    raw = read(d.path(".vmlist")).decode()
    entry = r'"\d+": \{ "node": "[^"]+", "type": "(?:qemu|lxc|openvz)", "version": \d+ \}'
    check(
        re.fullmatch(r'\{\n"version": \d+,\n"ids": \{\n' + entry + r"(?:,\n" + entry + r")*\}\n\n\}\n", raw),
        f".vmlist layout: {raw[:120]!r}...",
    )
    got = json.loads(raw)
    with open(fixture("vmlist.json")) as f:
        want = json.load(f)
    g = {k: (v["node"], v["type"]) for k, v in got["ids"].items()}
    w = {k: (v["node"], v["type"]) for k, v in want["ids"].items()}
    missing = sorted(set(w) - set(g), key=int)
    extra = sorted(set(g) - set(w), key=int)
    wrong = sorted((k for k in set(g) & set(w) if g[k] != w[k]), key=int)
    check(not (missing or extra or wrong),
          f"ids differ: missing {missing[:5]}, extra {extra[:5]}, wrong {[(k, g[k], w[k]) for k in wrong[:3]]}")
    versions = [v["version"] for v in got["ids"].values()]
    eq(len(set(versions)), len(versions), "per-VM versions must be distinct")


def test_c_fixture_survives_start_stop_and_passes_c_loader(t):
    """The C fixture after start+stop without mutation: rows unchanged; it passes the C loader check (version 229)."""
    tmp, d0 = _fixture_daemon(t)
    before = [r.astuple() for r in pmxdb.rows_of(d0.db)]
    with Daemon(tmp, nodename="vm") as d:
        read(d.path("storage.cfg"))
        os.listdir(d.path("nodes/vm/qemu-server"))
    res = loader_check(d.db)
    eq(res["root_version"], 229, "root version of the fixture")
    eq(len(res["entries"]), 86, "entries of the fixture")
    after = [r.astuple() for r in pmxdb.rows_of(d.db)]
    if before != after:
        changed = [a[:7] for a, b in zip(after, before) if a != b][:3]
        raise TestFailure(f"rows changed by start/stop without mutation ({len(before)} -> {len(after)} rows): {changed}")


def test_c_fixture_mutations_continue_versioning(t):
    """Mutations on the C fixture continue at version 230 and the DB still passes the C loader; dirs with an empty BLOB work."""
    tmp, d0 = _fixture_daemon(t)
    with Daemon(tmp, nodename="vm") as d:
        write(d.path("sdn-renamed/new.cfg"), b"zone: z\n")  # create 230 (inode 230), write 231
        os.rmdir(d.path("sdn"))  # 232
        os.rename(d.path("firewall/cluster.fw"), d.path("firewall/cluster.fw.bak"))  # 233
        os.rmdir(d.path("priv/lock/fixture-lock"))  # 234
        eq(read(d.path("deep/big.bin"))[:4], bytes([0, 7, 14, 21]), "big.bin bytes")
    res = loader_check(d.db)
    eq(res["root_version"], 234, "root version after 5 mutations on the fixture")
    p = res["paths"]
    eq((p["sdn-renamed/new.cfg"].inode, p["sdn-renamed/new.cfg"].version), (230, 231), "new.cfg (inode, version)")
    check("sdn" not in p and "priv/lock/fixture-lock" not in p, "removed dirs still in the DB")
    eq(p["firewall/cluster.fw.bak"].version, 233, "renamed file version")
    check("firewall/cluster.fw" not in p, "rename source still in the DB")


def test_schema_text_is_c_text_byte_for_byte(t):
    """The CREATE TABLE text in sqlite_master is database.c's byte for byte (two spaces after "(" and every comma), as in the C fixture."""
    tmp = t.tmpdir()
    with Daemon(tmp) as d:
        pass
    with pmxdb.Snapshot(fixture("config.db")) as s:
        c_sql = s.schema_sql()
    with pmxdb.Snapshot(d.db) as s:
        ours = s.schema_sql()
    eq(c_sql, pmxdb.SCHEMA_SQL, "sqlite_master text of the C fixture")
    eq(ours, c_sql, "sqlite_master text of a DB we created")


# ---------------------------------------------------------------- damaged DBs


def _dir(inode, parent, name, version=None):
    return (inode, parent, inode if version is None else version, 0, 1700000000, pmxdb.DT_DIR, name, None)


def _file(inode, parent, name, version=None, data=b"x"):
    return (inode, parent, inode if version is None else version, 0, 1700000000, pmxdb.DT_REG, name, data)


def _refused(t, what, rows, version, keywords):
    """A daemon on a DB with these rows (and __version__ version, False for
    none) exits non-zero without mounting, names the row on stderr and
    leaves the file byte for byte as it was."""
    tmp = t.tmpdir()
    d = Daemon(tmp, check_stop=False)
    pmxdb.make_db(d.db, rows, version=version)
    sha = sha256_file(d.db)
    pw = d.spawn()
    rc = pw.wait(20)
    if rc is None:
        d.proc = pw
        d.kill()
        raise TestFailure(f"{what}: daemon still running 20 s after start")
    check(not mounted(d.mount), f"{what}: daemon mounted the DB")
    check(rc != 0, f"{what}: daemon exited 0")
    err = d.stderr_text()
    missing = [k for k in keywords if k not in err]
    check(not missing, f"{what}: stderr does not name {missing}: {d.stderr_tail(2)}")
    eq(sha256_file(d.db), sha, f"{what}: DB sha256 after the refused start")
    for suffix in ("-wal", "-shm"):
        check(not os.path.exists(d.db + suffix), f"{what}: {suffix} file left beside the DB")


def test_damaged_db_without_version_row(t):
    """A DB with rows but no __version__ row is refused (C would start at version 1 and reuse inode 2 for the next create), file untouched."""
    rows = [_dir(2, 0, "nodes"), _dir(3, 2, "etc"), _file(4, 0, "storage.cfg")]
    _refused(t, "no __version__ row", rows, False, ["__version__", "3 other rows"])


def test_damaged_db_version_below_tree(t):
    """A __version__ version lower than an inode or a version of the tree is refused naming that row (the next create would overwrite it), file untouched."""
    _refused(t, "version below an inode", [_dir(2, 0, "etc"), _dir(7, 2, "seven")], 5,
             ["__version__ version 5", "'seven'", "0000000000000007"])
    _refused(t, "version below a version", [_dir(2, 0, "etc"), _file(3, 2, "newer.cfg", version=9)], 5,
             ["__version__ version 5", "version 9", "'newer.cfg'"])
    _refused(t, "negative version", [_dir(2, 0, "etc")], -1, ["__version__ version -1"])


def test_damaged_db_bad_names(t):
    """Rows named ".", ".." or with "/" or NUL in the name are refused naming the row, file untouched."""
    _refused(t, "name .", [_dir(2, 0, ".")], 10, ["'.' or '..'", "name = '.'"])
    _refused(t, "name ..", [_dir(2, 0, "etc"), _file(3, 2, "..")], 10, ["'.' or '..'", "name = '..'", "0000000000000003"])
    _refused(t, "name with /", [_file(2, 0, "etc/storage.cfg")], 10, ["contains '/'", "'etc/storage.cfg'"])
    _refused(t, "name with NUL", [_file(2, 0, "user.cfg\0x")], 10, ["contains NUL", "'user.cfg\\0x'"])


def test_damaged_db_inodes_out_of_range(t):
    """Rows with a negative inode or one in the plugin inode range (>= 2^62 - 1) are refused naming the row, file untouched."""
    _refused(t, "negative inode", [_file(-5, 0, "neg.cfg", version=2)], 10, ["inode -5 is out of range", "'neg.cfg'"])
    for ino in (pmxdb.MAX_INODE + 1, 1 << 62, (1 << 63) - 1):
        _refused(t, f"inode {ino}", [_file(ino, 0, "plug.cfg", version=2)], 10, [f"inode {ino} is out of range", "'plug.cfg'"])
