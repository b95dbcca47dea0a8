"""ipc: the libqb IPC service of the daemon, driven by the REAL libqb client
(COMPAT.md sections 5 and 8; checklist items 5 (IPC half), 6 and 7).

Every client is pmxcfs-ipc/tests/qbclient.c compiled against libqb (lib/qb.py);
clients of other users run with real setgid/setuid."""

import os
import resource
import shutil
import signal
import stat
import threading
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
    timeout,
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
    # the server creates the dir first, then the files one by one (libqb)
    wait_for(lambda: len(os.listdir(os.path.join("/dev/shm", dirs[0]))) >= 6, 5, what=f"the ring files in {dirs[0]}")
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


# --------------------------------------------------------------------------
# hostile local users: nobody may take IPC away from root


class ServiceLimitsDaemon(Daemon):
    """The daemon with the soft descriptor limit systemd gives a service (the
    shipped unit sets no LimitNOFILE): 1024; the hard limit stays ours
    (systemd: 524288; raising it needs CAP_SYS_RESOURCE)."""

    def argv(self, with_paths=True):
        prlimit = shutil.which("prlimit")
        if prlimit is None:
            raise TestFailure("prlimit (util-linux) not found")
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        hard = 524288 if hard == resource.RLIM_INFINITY else min(hard, 524288)
        return [prlimit, f"--nofile=1024:{hard}", "--"] + super().argv(with_paths)


def _root_request(svc, what, timeout=8):
    """A root libqb client must connect and get op 1 answered within `timeout` s."""
    r = qb.run(svc, "req", qb.OP_GET_FS_VERSION, "-", timeout=timeout)
    lines = r.replies()
    check(lines and lines[0].kind == "REPLY" and lines[0].error == OK, f"{what}: root's request failed: {r.describe()}")


def _nofile(pid):
    """(soft, hard) RLIMIT_NOFILE of a process, from /proc/PID/limits."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise TestFailure(f"no 'Max open files' in /proc/{pid}/limits")


class _FdSampler:
    """Largest descriptor count of a process, sampled every 10 ms in a thread."""

    def __init__(self, pid):
        self.pid, self.max, self._stop = pid, qb.fd_count(pid), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.wait(0.01):
            try:
                self.max = max(self.max, qb.fd_count(self.pid))
            except OSError:
                return

    def stop(self):
        self._stop.set()
        self._t.join(2)
        return self.max


@timeout(90)
def test_www_data_cannot_lock_root_out(t):
    """A www-data user holding as many connections as it can (2,000 attempts asking the smallest buffer, then 2,000 asking 1 MiB) under the shipped unit's soft descriptor limit (1024): root still connects and is answered; www-data gets at most its per-user caps (256 connections, 256 MiB of /dev/shm), the rest -EAGAIN or closed; afterwards www-data connects again."""
    d = t.stack.enter_context(ServiceLimitsDaemon())
    svc = d.ipc_name
    www = (qb.WWW_DATA_UID, www_data_gid())
    soft, hard = _nofile(d.pid)
    eq(soft, hard, "daemon's RLIMIT_NOFILE soft limit (raised to the hard limit at start)")
    floods = []
    try:
        for max_size in (12328, qb.MAX_MSG):
            f = qb.Flood(svc, www, 2000, mode="request", max_size=max_size, collect=3.0)
            floods.append(f)
            f.wait_summary(40)
            t.note(f"www-data flood asking {max_size}: {f.summary}")
            check(d.alive(), f"daemon died during the www-data flood: {d.stderr_tail()}")
        held = sum(f.outcome("accepted") for f in floods)
        other = {k: v for f in floods for k, v in f.summary["outcomes"].items() if k not in ("accepted", "refused:-11", "closed")}
        # root first: this is what a flood must never prevent
        _root_request(svc, f"while www-data holds {held} connections")
        check(0 < held <= 256, f"www-data holds {held} connections (per-user cap 256): {[f.summary for f in floods]}")
        check(not other, f"www-data sockets neither accepted, refused with -EAGAIN nor closed: {other}")
        big = floods[1].outcome("accepted")
        check(big * 3 * (1 << 20) <= 256 << 20, f"www-data holds {big} connections of 1 MiB (3 MiB of /dev/shm each), over 256 MiB")
    finally:
        for f in floods:
            f.release()
    # everything given back: www-data is served again
    wait_for(lambda: qb.run(svc, "req", 1, "-", creds=www).connected(), 10, what="www-data connecting again after the flood")
    wait_for(lambda: not qb.shm_dirs(d.pid), 10, what="no shared memory left after the flood")


@timeout(60)
def test_unprivileged_flood_closed_at_once(t):
    """A nobody user opening 2,000 connections that send nothing (and 2,000 that send the libqb request) under the shipped unit's soft descriptor limit (1024): every socket is closed at once (the requests answered with error 1, libqb's errno -1), the daemon's descriptor count does not grow (sampled every 10 ms), no shared memory is made, root is served throughout."""
    d = t.stack.enter_context(ServiceLimitsDaemon())
    svc = d.ipc_name
    _root_request(svc, "before the flood")
    base = qb.fd_count(d.pid)
    sampler = _FdSampler(d.pid)
    floods = []
    try:
        for mode in ("silent", "request"):
            f = qb.Flood(svc, qb.NOBODY, 2000, mode=mode, collect=2.0)
            floods.append(f)
            f.wait_summary(40)
            t.note(f"nobody flood ({mode}): {f.summary}, daemon fds {base} -> max {sampler.max}")
            check(d.alive(), f"daemon died during the nobody flood: {d.stderr_tail()}")
            # while the helper still holds all its sockets
            _root_request(svc, f"while nobody holds 2000 {mode} sockets")
            now = qb.fd_count(d.pid)
            check(now <= base + 4, f"daemon holds {now} descriptors while nobody holds its sockets (before: {base})")
            ok = {"closed"} if mode == "silent" else {"closed", "refused:1"}
            bad = {k: v for k, v in f.summary["outcomes"].items() if k not in ok}
            check(f.summary["connected"] > 0 and not bad, f"nobody's {mode} sockets not closed within 2 s: {f.summary}")
        check(floods[1].outcome("refused:1") > 0, f"no libqb-style request got the refusal (error 1): {floods[1].summary}")
        peak = sampler.stop()
        # at most the handshakes in progress of one user (16) and root's own clients
        check(peak <= base + 24, f"daemon descriptors grew from {base} to {peak} during the flood")
        # root's own clients have gone; their shm goes right after them
        wait_for(lambda: not qb.shm_dirs(d.pid), 5,
                 what="no shared memory of the daemon after the flood of a user who may not use IPC")
    finally:
        sampler.stop()
        for f in floods:
            f.release()
    r = qb.run(svc, "req", 1, "-", creds=qb.NOBODY)
    eq([l.text for l in r.lines], ["CONNECT_FAIL -1"], f"libqb client as nobody after the flood ({r.describe()})")
    _root_request(svc, "after the flood")


def test_shm_per_connection_follows_client_request(t):
    """/dev/shm per connection is bounded by what the client asked for (within 12328 bytes .. 1 MiB): a libqb client asking 16 KiB (root and www-data) gets 16 KiB rings (data files 20 KiB, 3 x (12 KiB header + 20 KiB) in all), one asking 64 MiB gets 1 MiB rings; the granted size is what libqb reports."""
    d = t.daemon()
    svc = d.ipc_name
    www = (qb.WWW_DATA_UID, www_data_gid())

    def data_size(m):
        return (m + 13 + 4095) // 4096 * 4096

    bad = []
    for creds, ask, granted in [(None, 16384, 16384), (www, 16384, 16384), (None, 64 << 20, qb.MAX_MSG), (None, None, qb.MAX_MSG)]:
        c = qb.spawn(svc, "maxsize", "req", 1, "-", "sleep", 20000, creds=creds, max_size=ask)
        try:
            dirs = wait_for(lambda: qb.shm_dirs(d.pid, c.pid), 10, what=f"shared memory of a client asking {ask}")
            path = os.path.join("/dev/shm", dirs[0])
            total, sizes = 0, {}
            for name in os.listdir(path):
                st = os.stat(os.path.join(path, name))
                total += st.st_blocks * 512
                if name.endswith("-data"):
                    sizes[name] = st.st_size
            want_total = 3 * (12288 + data_size(granted))
            if sorted(sizes.values()) != [data_size(granted)] * 3 or total > want_total:
                bad.append(f"client asking {ask} (uid {creds[0] if creds else 0}): data files {sizes}, {total} bytes allocated (expected 3 x {data_size(granted)}, at most {want_total})")
        finally:
            # its answer printed before it goes (the shm appears before that)
            c.wait_lines(3, 10)
            c.kill(signal.SIGKILL)
            res = c.finish(10)
        lines = [l.text for l in res.lines[:3]]
        if lines[:2] != ["CONNECTED", f"MAXSIZE {granted}"] or not lines[2].startswith("REPLY"):
            bad.append(f"client asking {ask}: output {lines}, expected MAXSIZE {granted} and a reply")
    check(not bad, "; ".join(bad))
    # a small client is served; a reply larger than its buffer is -ENOBUFS
    write(d.path("big.cfg"), b"x" * 30000)
    r = qb.run(svc, "req", qb.OP_GET_FS_VERSION, "-", "req", qb.OP_GET_CONFIG, cstr("big.cfg").hex(), max_size=16384)
    got = [(l.kind, l.error) for l in r.replies()]
    eq(got, [("REPLY", OK), ("REPLY", ENOBUFS)], f"op 1 and GET_CONFIG of 30000 bytes with a 16 KiB buffer ({r.describe()})")
    wait_for(lambda: not qb.shm_dirs(d.pid), 10, what="no shared memory left")
