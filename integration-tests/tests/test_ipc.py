"""ipc: the libqb IPC service of the daemon, driven by the REAL libqb client
(COMPAT.md sections 5 and 8; checklist items 5 (IPC half), 6 and 7).

Every client is pmxcfs-ipc/tests/qbclient.c compiled against libqb (lib/qb.py);
clients of other users run with real setgid/setuid."""

import os
import signal
import stat
import time

from lib import qb
from lib.harness import (
    Daemon,
    TestFailure,
    check,
    eq,
    read,
    wait_for,
    write,
    write_all,
    www_data_gid,
)
from lib.qb import (
    ECHRNG,
    EINVAL,
    EIO,
    ENOBUFS,
    ENOENT,
    EPERM,
    OK,
    cstr,
    vmid_prop,
    vmid_props,
)


def www_data_creds():
    gid = www_data_gid()
    return [(qb.WWW_DATA_UID, gid), (0, gid), (1000, gid)]


# --------------------------------------------------------------------------
# item 5 / item 6: status ops without payload, framing


def test_item5_version_members_vmlist_match_fuse(t):
    """item 5: IPC op 1 is byte-identical to .version (op 2 to .members, op 3 to .vmlist), read close together."""
    d = t.daemon()
    svc = d.ipc_name
    write(d.path("storage.cfg"), b"dir: local\n")
    d.makedirs("nodes/testnode/qemu-server")
    d.makedirs("nodes/testnode/lxc")
    write(d.path("nodes/testnode/qemu-server/100.conf"), b"memory: 1\n")
    write(d.path("nodes/testnode/lxc/101.conf"), b"memory: 1\n")
    eq(qb.call(svc, qb.OP_SET_STATUS, qb.set_status("kv/x", b"1\0")), (OK, b""), "SET_STATUS kv/x")
    eq(qb.call(svc, qb.OP_SET_STATUS, qb.set_status("nodeip", b"127.0.0.2\0")), (OK, b""), "SET_STATUS nodeip")
    names = [".version", ".members", ".vmlist"]
    ops = [qb.OP_GET_FS_VERSION, qb.OP_GET_CLUSTER_INFO, qb.OP_GET_GUEST_LIST]
    for attempt in range(3):
        before = [read(d.path(n)) for n in names]
        replies = qb.calls(svc, [(op, b"") for op in ops])
        after = [read(d.path(n)) for n in names]
        if before == after:
            break
    else:
        raise TestFailure("plugin files kept changing between two reads (nothing was written)")
    for n, op, f, (err, data) in zip(names, ops, before, replies):
        eq(err, OK, f"op {op} error")
        if data != f:
            raise TestFailure(f"op {op} reply differs from {n}: IPC {data[:200]!r}... FUSE {f[:200]!r}...")
    check(b'"kv/x": 0' in before[0], f".version has no kvstore entry for kv/x: {before[0][-120:]!r}")
    check(b'"100": {' in before[2] and b'"101": {' in before[2], f".vmlist lacks the guests: {before[2]!r}")
    # after a write both change the same way
    write(d.path("storage.cfg"), b"dir: other\n")
    f1 = read(d.path(".version"))
    eq(qb.ok(svc, qb.OP_GET_FS_VERSION), f1, "op 1 after a write vs .version")


def test_item6_payload_einval_unknown_op_echrng(t):
    """item 6: ops 1, 2, 3, 10 with a payload -EINVAL; op 9 and op 99 -ECHRNG; 24-byte reply header {id, size incl. header, error}."""
    d = t.daemon()
    svc = d.ipc_name
    reqs = []
    for op in (1, 2, 3, 10):
        reqs += [(op, b"\0"), (op, b"x" * 100)]
    for op in (9, 99):
        reqs += [(op, b""), (op, b"abc")]
    reqs.append((1, b""))
    r = qb.run(svc, *sum((["req", op, qb.hexarg(p)] for op, p in reqs), []))
    lines = r.replies()
    eq(len(lines), len(reqs), f"reply count ({r.describe()})")
    bad = []
    for (op, p), l in zip(reqs, lines):
        want = EINVAL if op in (1, 2, 3, 10) else ECHRNG
        if op == 1 and not p:
            want = OK
        if l.kind != "REPLY" or l.id is None:
            bad.append(f"op {op} payload {len(p)}: {l!r}")
            continue
        got = (l.res, l.id, l.size, l.error, len(l.data))
        exp_len = len(l.data) if want == OK else 0
        exp = (24 + exp_len, op, 24 + exp_len, want, exp_len)
        if got != exp:
            bad.append(f"op {op} payload {len(p)}: (res, id, size, error, datalen) = {got}, expected {exp}")
    check(not bad, "; ".join(bad))
    eq(lines[-1].data, read(d.path(".version")), "op 1 reply payload after the errors")


def test_reply_header_raw_bytes(t):
    """A success reply is exactly 24 header bytes {id @0, size @8, error @16} + payload; an error reply is 24 bytes."""
    d = t.daemon()
    svc = d.ipc_name
    r = qb.run(svc, "req", 2, "-", "req", 9, "-")
    ok, err = r.replies()
    members = read(d.path(".members"))
    eq((ok.res, ok.id, ok.size, ok.error, ok.data), (24 + len(members), 2, 24 + len(members), 0, members), "op 2 reply")
    eq((err.res, err.id, err.size, err.error, err.data), (24, 9, 24, ECHRNG, b""), "op 9 reply")


# --------------------------------------------------------------------------
# item 7: access rules


def test_item7_www_data_read_only(t):
    """item 7: www-data clients (uid 33, 0 and 1000 with gid www-data): -EPERM for SET_STATUS, LOG_CLUSTER_MSG, GET_CONFIG(priv/x), GET_CONFIG(nodes/N/priv/x) (also nodes/N//priv/x, a deliberate fix); GET_CONFIG(storage.cfg) and VERIFY_TOKEN work."""
    d = t.daemon()
    svc = d.ipc_name
    write(d.path("storage.cfg"), b"dir: local\n\tpath /var/lib/vz\n")
    d.makedirs("priv")
    write(d.path("priv/x"), b"secret\n")
    write(d.path("priv/token.cfg"), b"root@pam!t1 abc-123\n")
    d.makedirs("nodes/testnode/priv")
    write(d.path("nodes/testnode/priv/x"), b"node secret\n")
    log_before = qb.ok(svc, qb.OP_GET_CLUSTER_LOG, qb.get_log(0, ""))
    for creds in www_data_creds():
        res = qb.calls(
            svc,
            [
                (qb.OP_SET_STATUS, qb.set_status("kv/foo", b"bar\0")),
                (qb.OP_SET_STATUS, b""),
                (qb.OP_LOG_CLUSTER_MSG, qb.log_msg(5, "root@pam", "tag", "msg")),
                (qb.OP_GET_CONFIG, cstr("priv/x")),
                (qb.OP_GET_CONFIG, cstr("/priv/x")),
                (qb.OP_GET_CONFIG, cstr("priv")),
                (qb.OP_GET_CONFIG, cstr("nodes/testnode/priv/x")),
                (qb.OP_GET_CONFIG, cstr("nodes/other/priv/x")),
                (qb.OP_GET_CONFIG, cstr("nodes/testnode/priv")),
                (qb.OP_GET_CONFIG, cstr("nodes/testnode//priv/x")),
                (qb.OP_GET_CONFIG, cstr("privx")),
                (qb.OP_GET_CONFIG, cstr("nodes/testnode/privx")),
                (qb.OP_GET_CONFIG, cstr("storage.cfg")),
                (qb.OP_VERIFY_TOKEN, cstr("root@pam!t1 abc-123")),
                (qb.OP_VERIFY_TOKEN, cstr("root@pam!t1 abc-124")),
                (qb.OP_GET_FS_VERSION, b""),
                (qb.OP_GET_STATUS, qb.get_status("kv/foo")),
            ],
            creds=creds,
            what=f"uid {creds[0]} gid {creds[1]}",
        )
        errs = [e for e, _ in res]
        eq(
            errs,
            [EPERM] * 10 + [ENOENT, ENOENT, OK, OK, ENOENT, OK, ENOENT],
            f"errors for uid {creds[0]} gid {creds[1]} (SET_STATUS x2, LOG, GET_CONFIG priv/x, /priv/x, priv, "
            f"nodes/testnode/priv/x, nodes/other/priv/x, nodes/testnode/priv, nodes/testnode//priv/x, privx, "
            f"nodes/testnode/privx, storage.cfg, VERIFY_TOKEN ok/bad, op 1, GET_STATUS)",
        )
        eq(res[12][1], b"dir: local\n\tpath /var/lib/vz\n", "GET_CONFIG storage.cfg as www-data")
    # nothing was stored by the refused writes; root reads the private files
    eq(qb.call(svc, qb.OP_GET_STATUS, qb.get_status("kv/foo")), (ENOENT, b""), "kv/foo after the refused SET_STATUS")
    eq(qb.ok(svc, qb.OP_GET_CLUSTER_LOG, qb.get_log(0, "")), log_before, "cluster log after the refused LOG_CLUSTER_MSG")
    eq(qb.ok(svc, qb.OP_GET_CONFIG, cstr("priv/x")), b"secret\n", "GET_CONFIG priv/x as root")
    eq(qb.ok(svc, qb.OP_GET_CONFIG, cstr("nodes/testnode/priv/x")), b"node secret\n", "GET_CONFIG nodes/N/priv/x as root")


def test_item7_unprivileged_refused_at_connect(t):
    """item 7: uid != 0 and gid != www-data (65534/65534, 1000/0, 0/1000) are refused at connect: the libqb client sees errno -1 (section 8)."""
    d = t.daemon()
    svc = d.ipc_name
    for creds in (qb.NOBODY, (1000, 0), (0, 1000)):
        r = qb.run(svc, "req", 1, "-", creds=creds)
        eq([l.text for l in r.lines], ["CONNECT_FAIL -1"], f"client uid {creds[0]} gid {creds[1]} ({r.describe()})")
        eq(qb.shm_dirs(d.pid, r.pid), [], f"shared memory left for the refused client uid {creds[0]} gid {creds[1]}")
    eq(qb.ok(svc, qb.OP_GET_FS_VERSION), read(d.path(".version")), "root client after the refused ones")


# --------------------------------------------------------------------------
# GET_CONFIG (op 6)


def test_get_config(t):
    """GET_CONFIG: file bytes; missing or dir -ENOENT; trailing slash accepted; a path without final NUL loses its last byte; empty payload -EINVAL; plugin files are not in the DB."""
    d = t.daemon()
    svc = d.ipc_name
    content = b"dir: local\n\tpath /var/lib/vz\n\tcontent iso\n"
    write(d.path("storage.cfg"), content)
    d.makedirs("nodes/testnode/qemu-server")
    write(d.path("nodes/testnode/qemu-server/100.conf"), b"memory: 512\n")
    write(d.path("empty.cfg"), b"")
    cases = [
        (cstr("storage.cfg"), OK, content),
        (cstr("storage.cfg/"), OK, content),
        (b"storage.cfgX", OK, content),
        (b"storage.cfg", ENOENT, b""),  # loses the 'g'
        (cstr("nodes/testnode/qemu-server/100.conf"), OK, b"memory: 512\n"),
        (cstr("missing.cfg"), ENOENT, b""),
        (cstr("nodes"), ENOENT, b""),
        (cstr("nodes/testnode/qemu-server"), ENOENT, b""),
        (cstr("nodes/"), ENOENT, b""),
        (cstr(".version"), ENOENT, b""),
        (cstr("qemu-server/100.conf"), ENOENT, b""),
        (cstr("empty.cfg"), OK, b""),
        (b"", EINVAL, b""),
    ]
    qb.expect_replies(svc, qb.OP_GET_CONFIG, cases, what="GET_CONFIG")


def test_get_config_reply_size_limit(t):
    """GET_CONFIG replies over 1 MiB - 24 bytes fail with ENOBUFS in the libqb client (a file of exactly 1 MiB); 1 MiB - 24 arrives whole (section 8)."""
    d = t.daemon()
    svc = d.ipc_name
    fits = bytes((i * 7) & 0xFF for i in range(qb.MAX_MSG - 24))
    write_all(d.path("fits.bin"), fits)
    write_all(d.path("over.bin"), b"o" * (qb.MAX_MSG - 23))
    write_all(d.path("max.bin"), b"m" * qb.MAX_MSG)
    eq(os.stat(d.path("max.bin")).st_size, qb.MAX_MSG, "size of the 1 MiB file")
    data = qb.ok(svc, qb.OP_GET_CONFIG, cstr("fits.bin"), what="GET_CONFIG of 1 MiB - 24 bytes")
    check(data == fits, f"GET_CONFIG fits.bin: {len(data)} bytes, content differs: {data == fits}")
    for name in ("over.bin", "max.bin"):
        r = qb.run(svc, "req", qb.OP_GET_CONFIG, cstr(name).hex(), "req", 1, "-")
        lines = r.replies()
        check(lines and lines[0].kind == "FAIL" and lines[0].value == ENOBUFS,
              f"GET_CONFIG {name}: expected the client to fail with ENOBUFS, got {r.describe()}")
    eq(qb.ok(svc, qb.OP_GET_FS_VERSION), read(d.path(".version")), "op 1 after the ENOBUFS replies")


# --------------------------------------------------------------------------
# VERIFY_TOKEN (op 12)


def test_verify_token(t):
    """VERIFY_TOKEN: whole-line match in priv/token.cfg (spaces included, last line without newline too); no match or no file -ENOENT; newline/NUL inside, no final NUL, empty -EINVAL."""
    d = t.daemon()
    svc = d.ipc_name
    tok = "root@pam!monitoring 11111111-2222-3333-4444-555555555555"
    eq(qb.call(svc, qb.OP_VERIFY_TOKEN, cstr(tok)), (ENOENT, b""), "VERIFY_TOKEN without priv/token.cfg")
    d.makedirs("priv")
    write(d.path("priv/token.cfg"), f"{tok}\n  user@pve!spaced aaaa  \n\nuser@pve!last bbbb".encode())
    cases = [
        (cstr(tok), OK),
        (cstr(tok[:-4]), ENOENT),
        (cstr(tok + "6"), ENOENT),
        (cstr("  user@pve!spaced aaaa  "), OK),
        (cstr("user@pve!spaced aaaa"), ENOENT),
        (cstr("user@pve!last bbbb"), OK),
        (cstr("user@pve!last bbb"), ENOENT),
        (cstr("root@pam!other 1"), ENOENT),
        (cstr(tok + "\nuser@pve!last bbbb"), EINVAL),
        (cstr("a\n"), EINVAL),
        (b"root@pam\0monitoring\0", EINVAL),
        (tok.encode(), EINVAL),  # no final NUL
        (b"\0", EINVAL),
        (b"", EINVAL),
    ]
    res = qb.calls(svc, [(qb.OP_VERIFY_TOKEN, p) for p, _ in cases], what="VERIFY_TOKEN")
    bad = [f"{p!r}: {qb.errstr(e)} (expected {qb.errstr(w)})" for (p, w), (e, _) in zip(cases, res) if e != w]
    check(not bad, "; ".join(bad))
    check(all(data == b"" for _, data in res), "VERIFY_TOKEN replies carry a payload")


# --------------------------------------------------------------------------
# guest config properties (ops 11 and 13)

CONF_100 = (
    b"boot: order=scsi0\n"
    b"cores:   4   \n"
    b"memory: 2048\n"
    b"name: vm100\n"
    b'description: a "quoted" \\back\\slash\n'
    b"lock: \n"
    b"memory: 4096\n"
    b"\n"
    b"[snap1]\n"
    b"memory: 512\n"
    b"onlysnap: 1\n"
)
CONF_101 = b"arch: amd64\nhostname: ct101\nmemory: 512\n"
CONF_102 = b"memory: 1024\nname: vm102"  # no final newline
CONF_104 = b"[pending]\nmemory: 1\n"
# status.c _get_property_values keeps the later value of a repeated property but
# stops once it has seen as many repeated lines as properties were asked for
CONF_105 = b"memory: 1\nmemory: 2\nmemory: 3\ncores: 4\n"


def _guests(d):
    d.makedirs("nodes/testnode/qemu-server")
    d.makedirs("nodes/testnode/lxc")
    d.makedirs("nodes/other/qemu-server")
    write(d.path("nodes/testnode/qemu-server/100.conf"), CONF_100)
    write(d.path("nodes/testnode/lxc/101.conf"), CONF_101)
    write(d.path("nodes/other/qemu-server/102.conf"), CONF_102)
    write(d.path("nodes/testnode/qemu-server/103.conf"), b"")
    write(d.path("nodes/testnode/qemu-server/104.conf"), CONF_104)
    write(d.path("nodes/testnode/qemu-server/105.conf"), CONF_105)


def _one(vmid, pairs):
    return f'{{\n"{vmid}":{{' + ",".join(f'"{k}": "{v}"' for k, v in pairs) + "}\n}\n"


EMPTY_JSON = b"{\n\n}\n"


def _check_all(data, expected_entries, what):
    """vmid 0 reply: '{\\n' + entries joined by ',\\n' (any order) + '\\n}\\n'."""
    s = data.decode()
    check(s.startswith("{\n") and s.endswith("\n}\n"), f"{what}: framing {s!r}")
    body = s[2:-3]
    got = sorted(body.split(",\n")) if body else []
    eq(got, sorted(expected_entries), f"{what}: entries")


def test_guest_config_property_op11(t):
    """Op 11: JSON bytes of _print_found_properties (main section only, later value wins until the status.c stop rule, trimmed, \\ and " escaped, `lock: ` gives " "); vmid 1..99 -EINVAL, unknown -ENOENT, 0 = all; empty config -EIO; no final NUL loses a byte."""
    d = t.daemon()
    svc = d.ipc_name
    P = qb.OP_GET_GUEST_CONFIG_PROPERTY
    eq(qb.call(svc, P, vmid_prop(0, b"memory\0")), (OK, EMPTY_JSON), "op 11 vmid 0 without any guest")
    eq(qb.call(svc, P, vmid_prop(100, b"memory\0")), (ENOENT, b""), "op 11 vmid 100 without any guest")
    _guests(d)
    cases = [
        (vmid_prop(100, b"memory\0"), OK, _one(100, [("memory", "4096")]).encode()),
        (vmid_prop(100, b"cores\0"), OK, _one(100, [("cores", "4")]).encode()),
        (vmid_prop(100, b"boot\0"), OK, _one(100, [("boot", "order=scsi0")]).encode()),
        (vmid_prop(100, b"description\0"), OK, _one(100, [("description", 'a \\"quoted\\" \\\\back\\\\slash')]).encode()),
        (vmid_prop(100, b"lock\0"), OK, _one(100, [("lock", " ")]).encode()),
        (vmid_prop(100, b"onlysnap\0"), OK, EMPTY_JSON),
        (vmid_prop(100, b"mem\0"), OK, EMPTY_JSON),
        (vmid_prop(100, b"memoryX"), OK, _one(100, [("memory", "4096")]).encode()),
        (vmid_prop(100, b"Memory\0"), OK, EMPTY_JSON),  # op 11 does not validate the name
        (vmid_prop(101, b"hostname\0"), OK, _one(101, [("hostname", "ct101")]).encode()),
        (vmid_prop(102, b"name\0"), OK, _one(102, [("name", "vm102")]).encode()),
        (vmid_prop(103, b"memory\0"), EIO, b""),
        (vmid_prop(104, b"memory\0"), OK, EMPTY_JSON),
        (vmid_prop(105, b"memory\0"), OK, _one(105, [("memory", "2")]).encode()),
        (vmid_prop(105, b"cores\0"), OK, _one(105, [("cores", "4")]).encode()),
        (vmid_prop(999, b"memory\0"), ENOENT, b""),
        (vmid_prop(999, b""), ENOENT, b""),  # the VMID is checked before the property
        (vmid_prop(1, b"memory\0"), EINVAL, b""),
        (vmid_prop(99, b"memory\0"), EINVAL, b""),
        (vmid_prop(100, b""), EINVAL, b""),
        (vmid_prop(0, b""), EINVAL, b""),
    ]
    qb.expect_replies(svc, P, cases, what="op 11")
    _check_all(
        qb.ok(svc, P, vmid_prop(0, b"memory\0"), what="op 11 vmid 0 memory"),
        ['"100":{"memory": "4096"}', '"101":{"memory": "512"}', '"102":{"memory": "1024"}', '"105":{"memory": "2"}'],
        "op 11 vmid 0 memory",
    )
    _check_all(qb.ok(svc, P, vmid_prop(0, b"hostname\0")), ['"101":{"hostname": "ct101"}'], "op 11 vmid 0 hostname")
    eq(qb.ok(svc, P, vmid_prop(0, b"nothere\0")), EMPTY_JSON, "op 11 vmid 0, property nobody has")


def test_guest_config_properties_op13(t):
    """Op 13: properties in request order, duplicates repeated, vmid 0 = all; -EINVAL for n 0, empty prop, prop not starting a-z, missing NUL, leftover bytes, vmid 1..99; unknown vmid -ENOENT first; empty config -EIO."""
    d = t.daemon()
    svc = d.ipc_name
    _guests(d)
    P = qb.OP_GET_GUEST_CONFIG_PROPERTIES
    cases = [
        (vmid_props(100, 2, b"memory\0name\0"), OK, _one(100, [("memory", "4096"), ("name", "vm100")]).encode()),
        (vmid_props(100, 3, b"name\0onlysnap\0memory\0"), OK, _one(100, [("name", "vm100"), ("memory", "4096")]).encode()),
        (vmid_props(100, 2, b"memory\0memory\0"), OK, _one(100, [("memory", "4096"), ("memory", "4096")]).encode()),
        (vmid_props(100, 2, b"lock\0cores\0"), OK, _one(100, [("lock", " "), ("cores", "4")]).encode()),
        (vmid_props(100, 1, b"onlysnap\0"), OK, EMPTY_JSON),
        (vmid_props(102, 2, b"name\0memory\0"), OK, _one(102, [("name", "vm102"), ("memory", "1024")]).encode()),
        (vmid_props(103, 1, b"memory\0"), EIO, b""),
        (vmid_props(104, 1, b"memory\0"), OK, EMPTY_JSON),
        (vmid_props(105, 2, b"memory\0cores\0"), OK, _one(105, [("memory", "3")]).encode()),
        (vmid_props(105, 2, b"cores\0memory\0"), OK, _one(105, [("memory", "3")]).encode()),
        (vmid_props(105, 3, b"memory\0cores\0name\0"), OK, _one(105, [("memory", "3"), ("cores", "4")]).encode()),
        # bad inputs
        (vmid_props(100, 0, b"memory\0"), EINVAL, b""),
        (vmid_props(100, 1, b"\0"), EINVAL, b""),
        (vmid_props(100, 2, b"memory\0\0"), EINVAL, b""),
        (vmid_props(100, 1, b"Memory\0"), EINVAL, b""),
        (vmid_props(100, 1, b"1abc\0"), EINVAL, b""),
        (vmid_props(100, 2, b"memory\0_x\0"), EINVAL, b""),
        (vmid_props(100, 1, b"memory\0x"), EINVAL, b""),
        (vmid_props(100, 1, b"memory\0name\0"), EINVAL, b""),
        (vmid_props(100, 1, b"memory"), EINVAL, b""),
        (vmid_props(100, 2, b"memory\0"), EINVAL, b""),
        (vmid_props(100, 1, b""), EINVAL, b""),
        (vmid_props(0, 0, b"memory\0"), EINVAL, b""),
        (vmid_props(50, 1, b"memory\0"), EINVAL, b""),
        (vmid_props(1, 1, b"memory\0"), EINVAL, b""),
        (vmid_props(999, 1, b"memory\0"), ENOENT, b""),
        (vmid_props(999, 0, b""), ENOENT, b""),  # the VMID is checked first
    ]
    qb.expect_replies(svc, P, cases, what="op 13")
    _check_all(
        qb.ok(svc, P, vmid_props(0, 2, b"memory\0hostname\0")),
        [
            '"100":{"memory": "4096"}',
            '"101":{"memory": "512","hostname": "ct101"}',
            '"102":{"memory": "1024"}',
            '"105":{"memory": "3"}',
        ],
        "op 13 vmid 0 memory+hostname",
    )


# --------------------------------------------------------------------------
# robustness


def test_malformed_requests_keep_daemon_serving(t):
    """Malformed requests (truncated header, size larger than the message, size below the header, unknown op, libqb's disconnect id -3) get an errno or a closed connection; the daemon keeps serving a second client."""
    d = t.daemon()
    svc = d.ipc_name
    version = read(d.path(".version"))
    cases = [
        ("truncated header (8 bytes)", "0100000000000000"),
        ("truncated header (1 byte)", "01"),
        ("size larger than the message", qb.raw_msg(6, 1000, cstr("storage.cfg")).hex()),
        ("size far beyond the message", qb.raw_msg(1, 1 << 30).hex()),
        ("size below the header", qb.raw_msg(1, 8).hex()),
        ("negative size", qb.raw_msg(1, -5).hex()),
        ("unknown op", qb.raw_msg(99, 16).hex()),
        ("unknown op with bogus size", qb.raw_msg(42, 1 << 30).hex()),
        ("disconnect message (id -3)", qb.raw_msg(-3, 16).hex()),
    ]
    bad = []
    for what, hx in cases:
        r = qb.run(svc, "raw", hx, "req", 1, "-", timeout=15)
        lines = r.replies()
        if not lines:
            bad.append(f"{what}: no output ({r.describe()})")
            continue
        first = lines[0]
        if first.kind == "REPLY" and first.error is not None and first.error < 0:
            pass  # an errno
        elif first.kind == "FAIL":
            pass  # connection closed
        else:
            bad.append(f"{what}: expected an errno or a closed connection, got {first!r}")
        if not d.alive():
            raise TestFailure(f"daemon died after '{what}': {d.stderr_tail()}")
        err, data = qb.call(svc, qb.OP_GET_FS_VERSION, what=f"second client after '{what}'")
        if (err, data) != (OK, version):
            bad.append(f"second client after '{what}': ({qb.errstr(err)}, {data[:60]!r})")
    check(not bad, "; ".join(bad))


def test_sigkill_client_leaves_no_shm(t):
    """A client SIGKILLed mid-connection: its /dev/shm/qb-<daemon pid>-<client pid>-* dir goes away within a few seconds; the daemon keeps serving."""
    d = t.daemon()
    svc = d.ipc_name
    c = qb.spawn(svc, "req", 1, "-", "sleep", 30000)
    dirs = wait_for(lambda: qb.shm_dirs(d.pid, c.pid), 10, what="the client's shared memory dir")
    eq(len(dirs), 1, f"shm dirs of the client {dirs}")
    files = sorted(os.listdir(os.path.join("/dev/shm", dirs[0])))
    eq(len(files), 6, f"files in {dirs[0]} (request/response/event header+data): {files}")
    c.kill(signal.SIGKILL)
    c.popen.wait(5)
    wait_for(lambda: not qb.shm_dirs(d.pid, c.pid), 5, what=f"removal of /dev/shm/{dirs[0]} after SIGKILL")
    eq(qb.ok(svc, qb.OP_GET_CLUSTER_INFO), read(d.path(".members")), "op 2 after the killed client")
    wait_for(lambda: not qb.shm_dirs(d.pid), 5, what="no /dev/shm/qb-<daemon pid>-* left at all")


def test_hundred_concurrent_clients(t):
    """100 libqb clients connected at once (100 shm dirs at the same time) all get answers."""
    d = t.daemon()
    svc = d.ipc_name
    n = 100
    clients = []
    t0 = time.monotonic()
    for i in range(n):
        clients.append(
            qb.spawn(
                svc,
                "req", 1, "-",
                "sleep", 4000,
                "req", qb.OP_SET_STATUS, qb.set_status(f"kv/c{i}", f"v{i}\0").hex(),
                "req", qb.OP_GET_STATUS, qb.get_status(f"kv/c{i}").hex(),
            )
        )
    spawn_s = time.monotonic() - t0
    pids = [c.pid for c in clients]
    try:
        wait_for(
            lambda: sum(1 for p in pids if qb.shm_dirs(d.pid, p)) == n,
            10,
            interval=0.1,
            what=f"{n} clients connected at the same time (spawned in {spawn_s:.1f}s)",
        )
    finally:
        results = [c.finish(30) for c in clients]
    bad = []
    for i, r in enumerate(results):
        lines = r.lines
        kinds = [(l.kind, l.error) for l in lines]
        if kinds != [("CONNECTED", None), ("REPLY", 0), ("REPLY", 0), ("REPLY", 0)]:
            bad.append(f"client {i}: {r.describe()}")
        elif lines[3].data != f"v{i}\0".encode():
            bad.append(f"client {i}: GET_STATUS {lines[3].data!r}")
    check(not bad, f"{len(bad)} of {n} clients failed: " + "; ".join(bad[:5]))
    wait_for(lambda: not qb.shm_dirs(d.pid), 10, what="all 100 shm dirs removed after the clients exited")


def test_restart_flag_protocol(t):
    """Restart flag: absent while the daemon serves IPC, present (0440 root:www-data) after SIGTERM; on the next start it is removed only once IPC answers."""
    tmp = t.tmpdir()
    with Daemon(tmp) as d:
        check(not os.path.exists(d.restart_flag), "restart flag exists while the daemon serves")
        qb.ok(d.ipc_name, qb.OP_GET_FS_VERSION)
        eq(d.stop(signal.SIGTERM), 0, "exit code on SIGTERM")
        check(os.path.exists(d.restart_flag), "restart flag missing after SIGTERM")
        st = os.stat(d.restart_flag)
        eq(oct(stat.S_IMODE(st.st_mode)), oct(0o440), "restart flag mode")
        eq((st.st_uid, st.st_gid), (0, www_data_gid()), "restart flag owner")
        r = qb.run(d.ipc_name, "req", 1, "-")
        check(not r.connected(), f"IPC still accepts connections after the daemon exited: {r.describe()}")
    with Daemon(tmp) as d2:
        wait_for(lambda: not os.path.exists(d2.restart_flag), 10, what="removal of the restart flag after start")
        eq(qb.ok(d2.ipc_name, qb.OP_GET_FS_VERSION), read(d2.path(".version")), "op 1 right after the flag disappeared")
