"""plugins: the generated files and symlinks at the root of the mount
(COMPAT.md section 3; checklist item 5, FUSE half)."""

import errno
import json
import os
import re
import stat
import time

from lib.harness import (
    Daemon,
    TestFailure,
    check,
    eq,
    expect_errno,
    expect_ok,
    read,
    write,
    www_data_gid,
)

# status.c memdb_change_array, pve-cluster 9.1.6, in order
VERSION_PATHS = [
    "corosync.conf", "corosync.conf.new", "storage.cfg", "user.cfg", "domains.cfg",
    "notifications.cfg", "priv/notifications.cfg", "priv/shadow.cfg", "priv/acme/plugins.cfg",
    "priv/tfa.cfg", "priv/token.cfg", "priv/wg-keys.cfg", "datacenter.cfg", "vzdump.cron",
    "vzdump.conf", "jobs.cfg", "ha/crm_commands", "ha/manager_status", "ha/resources.cfg",
    "ha/rules.cfg", "ha/groups.cfg", "ha/fence.cfg", "status.cfg", "replication.cfg",
    "ceph.conf", "sdn/vnets.cfg", "sdn/zones.cfg", "sdn/controllers.cfg", "sdn/subnets.cfg",
    "sdn/ipams.cfg", "sdn/mac-cache.json", "sdn/pve-ipam-state.json", "sdn/dns.cfg",
    "sdn/fabrics.cfg", "sdn/route-maps.cfg", "sdn/prefix-lists.cfg", "sdn/.running-config",
    "virtual-guest/cpu-models.conf", "virtual-guest/profiles.cfg", "firewall/cluster.fw",
    "mapping/directory.cfg", "mapping/pci.cfg", "mapping/usb.cfg",
]
assert len(VERSION_PATHS) == 43

READONLY_PLUGINS = [".version", ".members", ".vmlist", ".rrd", ".clusterlog"]


def version_regex(nodename):
    body = "".join(f'"{re.escape(p)}": (\\d+),\\n' for p in VERSION_PATHS)
    return re.compile(
        r'\{\n"starttime": (\d+),\n"clinfo": (\d+),\n"vmlist": (\d+),\n'
        + body
        + r'"kvstore": \{\n"'
        + re.escape(nodename)
        + r'": \{\n(?:"[^"\n]+": \d+(?:,\n"[^"\n]+": \d+)*)?\}\n(?:,\n"[^"\n]+": \{\n(?:"[^"\n]+": \d+(?:,\n"[^"\n]+": \d+)*)?\}\n)*\}\n\}\n\Z'
    )


def parse_version(d):
    raw = read(d.path(".version")).decode()
    m = version_regex(d.nodename).fullmatch(raw)
    if not m:
        raise TestFailure(f".version does not have the C layout: {raw[:160]!r}...{raw[-80:]!r}")
    g = [int(x) for x in m.groups()]
    counters = dict(zip(VERSION_PATHS, g[3:]))
    return {"starttime": g[0], "clinfo": g[1], "vmlist": g[2], "paths": counters, "raw": raw}


def test_item5_version_layout(t):
    """item 5: .version has the byte layout of cfs_create_version_msg (43 paths in order, kvstore block) and is valid JSON."""
    t_before = int(time.time())
    d = t.daemon()
    v = parse_version(d)
    check(t_before - 5 <= v["starttime"] <= int(time.time()) + 1, f"starttime {v['starttime']} is not the daemon start time")
    bad = {p: n for p, n in v["paths"].items() if n != 1}
    check(not bad, f"DB open must bump every path counter to exactly 1 on a fresh start: {bad}")
    j = json.loads(v["raw"])
    eq(list(j)[:3], ["starttime", "clinfo", "vmlist"], "first keys")
    eq(j["kvstore"], {"testnode": {}}, "kvstore of a fresh local node")
    eq(v["raw"].endswith('"mapping/usb.cfg": 1,\n"kvstore": {\n"testnode": {\n}\n}\n}\n'), True, "tail bytes of .version")
    # starttime is stable
    eq(parse_version(d)["starttime"], v["starttime"], "starttime on a second read")


def test_item5_one_write_bumps_counter_by_one(t):
    """item 5: one write to storage.cfg raises its .version counter by exactly 1, nothing else changes."""
    d = t.daemon()
    write(d.path("storage.cfg"), b"dir: local\n")
    v0 = parse_version(d)
    fd = os.open(d.path("storage.cfg"), os.O_WRONLY)
    try:
        eq(os.write(fd, b"dir: other\n"), 11, "write result")
    finally:
        os.close(fd)
    v1 = parse_version(d)
    eq(v1["paths"]["storage.cfg"], v0["paths"]["storage.cfg"] + 1, "storage.cfg counter after one write")
    others0 = {k: n for k, n in v0["paths"].items() if k != "storage.cfg"}
    others1 = {k: n for k, n in v1["paths"].items() if k != "storage.cfg"}
    eq(others1, others0, "other path counters")
    eq((v1["vmlist"], v1["clinfo"], v1["starttime"]), (v0["vmlist"], v0["clinfo"], v0["starttime"]), "vmlist/clinfo/starttime")


def test_item5_mkdir_changes_no_counter(t):
    """item 5: mkdir changes no counter (not even for a path of the list made as a dir)."""
    d = t.daemon()
    before = read(d.path(".version"))
    os.mkdir(d.path("ha"))
    os.mkdir(d.path("sdn"))
    os.mkdir(d.path("user.cfg"))
    os.mkdir(d.path("ha/groups.cfg"))
    after = read(d.path(".version"))
    eq(after, before, ".version after mkdir")


def test_version_counter_events(t):
    """A path counter rises by 1 on create, write, truncate, mtime change, delete, and on rename for both names."""
    d = t.daemon()
    d.makedirs("ha")
    c = lambda: parse_version(d)["paths"]  # noqa: E731
    steps = []

    def step(what, fn, expect):
        before = c()
        fn()
        after = c()
        diff = {p: after[p] - before[p] for p in after if after[p] != before[p]}
        if diff != expect:
            steps.append(f"{what}: counter changes {diff}, expected {expect}")

    step("create user.cfg", lambda: os.close(os.open(d.path("user.cfg"), os.O_WRONLY | os.O_CREAT, 0o640)), {"user.cfg": 1})
    step("write user.cfg", lambda: write(d.path("user.cfg"), b"x", os.O_WRONLY), {"user.cfg": 1})
    step("truncate user.cfg", lambda: os.truncate(d.path("user.cfg"), 0), {"user.cfg": 1})
    step("utime user.cfg", lambda: os.utime(d.path("user.cfg"), (1, 1600000000)), {"user.cfg": 1})
    step("rename user.cfg -> datacenter.cfg", lambda: os.rename(d.path("user.cfg"), d.path("datacenter.cfg")),
         {"user.cfg": 1, "datacenter.cfg": 1})
    step("write tmp file", lambda: write(d.path("ha/resources.cfg.tmp"), b"x"), {})
    step("rename tmp -> ha/resources.cfg", lambda: os.rename(d.path("ha/resources.cfg.tmp"), d.path("ha/resources.cfg")),
         {"ha/resources.cfg": 1})
    step("unlink datacenter.cfg", lambda: os.unlink(d.path("datacenter.cfg")), {"datacenter.cfg": 1})
    step("read ha/resources.cfg", lambda: read(d.path("ha/resources.cfg")), {})
    check(not steps, "; ".join(steps))


def test_members_local_mode(t):
    """.members in local mode: {"nodename": ..., "version": N} in the exact C layout, no cluster/nodelist."""
    d = t.daemon()
    raw = read(d.path(".members")).decode()
    check(re.fullmatch(r'\{\n"nodename": "testnode",\n"version": \d+\n\}\n', raw), f".members layout: {raw!r}")
    j = json.loads(raw)
    eq(j["nodename"], "testnode", "nodename")
    check("cluster" not in j and "nodelist" not in j, "cluster/nodelist in local mode")


def test_vmlist_format(t):
    """.vmlist layout: version line, "ids" omitted when empty, one C-formatted line per VM incl. openvz."""
    d = t.daemon()
    raw0 = read(d.path(".vmlist")).decode()
    check(re.fullmatch(r'\{\n"version": \d+\n\n\}\n', raw0), f"empty .vmlist layout: {raw0!r}")
    for p in ("nodes/testnode/qemu-server", "nodes/testnode/lxc", "nodes/testnode/openvz", "nodes/n2/qemu-server"):
        d.makedirs(p)
    write(d.path("nodes/testnode/qemu-server/100.conf"), b"a")
    write(d.path("nodes/testnode/lxc/101.conf"), b"a")
    write(d.path("nodes/testnode/openvz/102.conf"), b"a")
    write(d.path("nodes/n2/qemu-server/103.conf"), b"a")
    write(d.path("nodes/testnode/qemu-server/notavm.conf"), b"a")
    write(d.path("nodes/testnode/qemu-server/0100.conf"), b"a")
    raw = read(d.path(".vmlist")).decode()
    entry = r'"\d+": \{ "node": "[^"]+", "type": "(?:qemu|lxc|openvz)", "version": \d+ \}'
    check(
        re.fullmatch(r'\{\n"version": \d+,\n"ids": \{\n' + entry + r"(?:,\n" + entry + r")*\}\n\n\}\n", raw),
        f".vmlist layout: {raw!r}",
    )
    j = json.loads(raw)
    got = {k: (v["node"], v["type"]) for k, v in j["ids"].items()}
    eq(
        got,
        {"100": ("testnode", "qemu"), "101": ("testnode", "lxc"), "102": ("testnode", "openvz"), "103": ("n2", "qemu")},
        "ids",
    )
    versions = [v["version"] for v in j["ids"].values()]
    eq(len(set(versions)), len(versions), f"per-VM versions come from one global counter, got duplicates {versions}")


def test_debug_read_write(t):
    """.debug reads 0\\n; writing 1\\n switches it to 1\\n; 0\\n back; anything else EIO; 1\\nextra is a 2-byte write."""
    d = t.daemon()
    f = d.path(".debug")
    eq(read(f), b"0\n", "initial .debug")

    def wr(data, offset=0, flags=os.O_WRONLY):
        fd = os.open(f, flags)
        try:
            return os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    eq(wr(b"1\n"), 2, "write 1\\n")
    eq(read(f), b"1\n", ".debug after 1\\n")
    eq(wr(b"0\n"), 2, "write 0\\n")
    eq(read(f), b"0\n", ".debug after 0\\n")
    expect_errno(errno.EIO, wr, b"2\n", what="write 2\\n")
    expect_errno(errno.EIO, wr, b"x", what="write x")
    expect_errno(errno.EIO, wr, b"1", what="write 1 (no newline)")
    expect_errno(errno.EIO, wr, b"1\n", 3, what="write 1\\n at offset 3")
    eq(read(f), b"0\n", ".debug after bad writes")
    eq(wr(b"1\nextra"), 2, "write 1\\nextra (short write)")
    eq(read(f), b"1\n", ".debug after 1\\nextra")
    eq(wr(b"0\n", 0, os.O_WRONLY | os.O_TRUNC), 2, "write 0\\n with O_TRUNC")
    eq(read(f), b"0\n", ".debug after O_TRUNC write")


def test_debug_switches_logging(t):
    """Writing 1\n to .debug turns debug logging on in the running daemon, 0\n off (end to end)."""
    d = t.daemon()

    def debug_lines():
        return sum(1 for l in d.stderr_text().splitlines() if "DEBUG" in l or "] debug: " in l)  # ours, C

    def some_fs_work(tag):
        write(d.path(f"debugprobe-{tag}"), b"x")
        os.stat(d.path(f"debugprobe-{tag}"))

    some_fs_work("a")
    time.sleep(0.3)
    before = debug_lines()
    eq(before, 0, "DEBUG lines before .debug was switched on")
    write(d.path(".debug"), b"1\n")
    some_fs_work("b")
    time.sleep(0.3)
    on = debug_lines()
    check(on > before, f"no DEBUG lines after writing 1\\n to .debug ({on})")
    write(d.path(".debug"), b"0\n")
    time.sleep(0.3)
    off = debug_lines()
    some_fs_work("c")
    time.sleep(0.3)
    eq(debug_lines(), off, "DEBUG lines after writing 0\\n to .debug")


def test_clusterlog_json(t):
    """.clusterlog is JSON {"data": [...]} with the start entry "starting cluster log"."""
    d = t.daemon()
    raw = read(d.path(".clusterlog"))
    try:
        j = json.loads(raw)
    except ValueError as e:
        raise TestFailure(f".clusterlog is not JSON ({e}): {raw[:200]!r}")
    check(isinstance(j, dict) and isinstance(j.get("data"), list), f".clusterlog has no data list: {raw[:200]!r}")
    keys = {"uid", "time", "pri", "tag", "pid", "node", "user", "msg"}
    for e in j["data"]:
        eq(set(e), keys, "keys of a cluster log entry")
    start = [e for e in j["data"] if e["msg"] == "starting cluster log"]
    check(start, f'no "starting cluster log" entry: {j["data"][:3]}')
    e = start[0]
    eq((e["node"], e["user"], e["tag"], e["pri"]), ("testnode", "root", "cluster", 6), "start entry node/user/tag/pri")
    check(abs(e["time"] - time.time()) < 60, "start entry time")


def test_rrd_readable(t):
    """.rrd is readable: key:data lines (empty on a fresh daemon), no NUL byte over FUSE."""
    d = t.daemon()
    raw = read(d.path(".rrd"))
    check(b"\0" not in raw, f".rrd contains a NUL byte: {raw[-20:]!r}")
    for line in raw.decode(errors="replace").splitlines():
        check(":" in line, f".rrd line without key:data: {line!r}")
    eq(os.stat(d.path(".rrd")).st_size, len(raw), "st_size of .rrd vs bytes read")


def test_symlinks(t):
    """Symlinks local, qemu-server, lxc, openvz point to nodes/<node>[/<x>], mode 0755 root:www-data, and resolve."""
    d = t.daemon()
    gid = www_data_gid()
    want = {
        "local": "nodes/testnode",
        "qemu-server": "nodes/testnode/qemu-server",
        "lxc": "nodes/testnode/lxc",
        "openvz": "nodes/testnode/openvz",
    }
    for name, target in want.items():
        eq(os.readlink(d.path(name)), target, f"readlink {name}")
        st = os.lstat(d.path(name))
        check(stat.S_ISLNK(st.st_mode), f"{name} is not a symlink")
        eq(oct(stat.S_IMODE(st.st_mode)), oct(0o755), f"{name} mode")
        eq((st.st_uid, st.st_gid), (0, gid), f"{name} owner")
        eq(st.st_size, len(target), f"{name} st_size")
    d.makedirs("nodes/testnode/qemu-server")
    write(d.path("nodes/testnode/qemu-server/100.conf"), b"memory: 1\n")
    eq(read(d.path("qemu-server/100.conf")), b"memory: 1\n", "read through the qemu-server link")
    eq(os.listdir(d.path("local")), ["qemu-server"], "listing through the local link")


def test_plugin_files_mode_mtime_size(t):
    """Plugin files: regular, 0440 (.debug 0640), root:www-data, mtime 0, size = bytes read; the root dir has mtime 0."""
    d = t.daemon()
    gid = www_data_gid()
    bad = []
    for name in READONLY_PLUGINS + [".debug"]:
        st = os.stat(d.path(name))
        m = 0o640 if name == ".debug" else 0o440
        got = (stat.S_ISREG(st.st_mode), oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid, st.st_mtime)
        if got != (True, oct(m), 0, gid, 0):
            bad.append(f"{name}: (isreg, mode, uid, gid, mtime) = {got}")
        data = read(d.path(name))
        st2 = os.stat(d.path(name))
        if name != ".clusterlog" and st2.st_size != len(data):
            bad.append(f"{name}: st_size {st2.st_size} != {len(data)} bytes read")
    eq(os.stat(d.mount).st_mtime, 0, "root dir mtime")
    check(not bad, "; ".join(bad))


def test_readonly_plugin_write_eio(t):
    """Writing a read-only plugin file (.version, .members, .vmlist, .rrd, .clusterlog) is EIO (cfs-plug-func.c write/truncate)."""
    d = t.daemon()
    for name in READONLY_PLUGINS:
        before = read(d.path(name)) if name != ".clusterlog" else None
        fd = expect_ok(os.open, d.path(name), os.O_WRONLY, what=f"open({name}, O_WRONLY) as root")
        try:
            expect_errno(errno.EIO, os.write, fd, b"1\n", what=f"write {name}")
        finally:
            os.close(fd)
        expect_errno(errno.EIO, os.truncate, d.path(name), 0, what=f"truncate {name}")
        expect_errno(errno.EIO, os.open, d.path(name), os.O_WRONLY | os.O_TRUNC, what=f"open({name}, O_TRUNC)")
        if before is not None and name not in (".rrd",):
            eq(read(d.path(name)), before, f"{name} after the refused writes")


def test_plugin_entries_refuse_changes(t):
    """Plugin entries: unlink/rename EACCES, utime EACCES, mkdir/create over them EEXIST."""
    d = t.daemon()
    for name in (".version", ".debug", "local"):
        expect_errno(errno.EACCES, os.unlink, d.path(name), what=f"unlink {name}")
        expect_errno(errno.EACCES, os.rename, d.path(name), d.path(name + ".x"), what=f"rename {name}")
        expect_errno(errno.EEXIST, os.mkdir, d.path(name), what=f"mkdir {name}")
    for name in (".version", ".debug"):
        expect_errno(errno.EACCES, os.utime, d.path(name), (1, 1), what=f"utime {name}")
    expect_errno(
        errno.EEXIST, os.open, d.path(".vmlist"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640, what="O_EXCL create .vmlist"
    )


def test_vmlist_version_0_without_nodes_dir(t):
    """.vmlist version and the .version "vmlist" counter are 0 on a DB without a nodes dir (C: status.c only bumps vmlist_version when memdb.c rebuilds the list from an existing nodes dir, or on register/delete); mkdir changes nothing, creating a guest config makes it 1."""
    tmp = t.tmpdir()
    with Daemon(tmp) as d:
        eq(read(d.path(".vmlist")), b'{\n"version": 0\n\n}\n', ".vmlist of a fresh DB")
        eq(parse_version(d)["vmlist"], 0, '.version "vmlist" of a fresh DB')
        d.makedirs("nodes/testnode/qemu-server")
        eq(read(d.path(".vmlist")), b'{\n"version": 0\n\n}\n', ".vmlist after mkdir nodes/testnode/qemu-server")
        os.close(os.open(d.path("nodes/testnode/qemu-server/100.conf"), os.O_WRONLY | os.O_CREAT, 0o640))
        eq(json.loads(read(d.path(".vmlist")))["version"], 1, ".vmlist version after one register (create)")
        eq(parse_version(d)["vmlist"], 1, '.version "vmlist" after one register (create)')
        os.unlink(d.path("nodes/testnode/qemu-server/100.conf"))
    # restart: the nodes dir exists, so the list is built from it once
    with Daemon(tmp) as d:
        eq(read(d.path(".vmlist")), b'{\n"version": 1\n\n}\n', ".vmlist after a restart with an empty nodes dir")
        eq(parse_version(d)["vmlist"], 1, '.version "vmlist" after a restart with a nodes dir')


def _mountinfo_of(path):
    """(source, fstype) of the mount at path, from /proc/self/mountinfo."""
    real = os.path.realpath(path)
    for line in open("/proc/self/mountinfo"):
        left, _, right = line.partition(" - ")
        if left.split()[4] == real:
            fstype, source = right.split()[:2]
            return source, fstype
    raise TestFailure(f"{path} not in /proc/self/mountinfo")


def test_mount_source_is_dev_fuse(t):
    """The mount shows source /dev/fuse and type fuse in /proc/mounts, as the C daemon's (libfuse default, no fsname)."""
    d = t.daemon()
    eq(_mountinfo_of(d.mount), ("/dev/fuse", "fuse"), "(source, fstype) in /proc/self/mountinfo")
    real = os.path.realpath(d.mount)
    lines = [l.split() for l in open("/proc/mounts") if l.split()[1] == real]
    eq([l[0] for l in lines], ["/dev/fuse"], "source in /proc/mounts")


def test_plugin_entries_st_blocks_0(t):
    """st_blocks of the root's plugin files and symlinks is 0 whatever their size (C: cfs-plug-func.c and cfs-plug-link.c set no st_blocks); DB files keep ceil(size/4096)."""
    d = t.daemon()
    write(d.path("storage.cfg"), b"x" * 5000)
    bad = []
    for name in READONLY_PLUGINS + [".debug", "local", "qemu-server", "lxc", "openvz"]:
        st = os.lstat(d.path(name))
        if st.st_blocks != 0:
            bad.append(f"{name}: st_size {st.st_size}, st_blocks {st.st_blocks}")
    check(not bad, "; ".join(bad))
    check(os.stat(d.path(".version")).st_size > 0, ".version is not empty (the check above means something)")
    eq(os.stat(d.path("storage.cfg")).st_blocks, 2, "st_blocks of a 5000-byte DB file")
