"""status: the kv store, `nodeip` and the guest list over IPC (COMPAT.md
sections 5, 6 and 8; checklist item 8 single node, item 1 IPC half).

Requests go through the real libqb client (lib/qb.py)."""

import errno
import json
import os
import re

from lib import qb
from lib.harness import TestFailure, check, eq, expect_errno, read, write
from lib.qb import EFBIG, EINVAL, ENOENT, ENOMEM, OK, get_status, set_status


def _set(svc, name, data, what=None):
    return qb.call(svc, qb.OP_SET_STATUS, set_status(name, data), what=what or f"SET_STATUS {name}")


def _get(svc, name, node=""):
    return qb.call(svc, qb.OP_GET_STATUS, get_status(name, node), what=f"GET_STATUS {name} node {node!r}")


def _kvstore_block(d):
    """The kvstore part of .version as raw text and parsed."""
    raw = read(d.path(".version")).decode()
    i = raw.find('"kvstore": {\n')
    check(i >= 0, f".version has no kvstore block: {raw[-200:]!r}")
    j = json.loads(raw)
    return raw[i:], j["kvstore"]


def _members_version(d):
    raw = read(d.path(".members")).decode()
    m = re.fullmatch(r'\{\n"nodename": "testnode",\n"version": (\d+)\n\}\n', raw)
    check(m, f".members layout: {raw!r}")
    return int(m.group(1))


def test_item8_set_get_status_single_node(t):
    """item 8: SET_STATUS(kv/foo, bar\\0) then GET_STATUS returns exactly bar\\0 (node "" and own name); other node -ENOENT; empty data deletes; 32769 bytes -EFBIG, 32768 works."""
    d = t.daemon()
    svc = d.ipc_name
    eq(_get(svc, "kv/foo"), (ENOENT, b""), "GET_STATUS of a key never set")
    eq(_set(svc, "kv/foo", b"bar\0"), (OK, b""), "SET_STATUS kv/foo bar\\0")
    eq(_get(svc, "kv/foo"), (OK, b"bar\0"), "GET_STATUS kv/foo node ''")
    eq(_get(svc, "kv/foo", "testnode"), (OK, b"bar\0"), "GET_STATUS kv/foo node testnode")
    eq(_get(svc, "kv/foo", "othernode"), (ENOENT, b""), "GET_STATUS kv/foo of another node")
    eq(_get(svc, "kv/fo"), (ENOENT, b""), "GET_STATUS of a prefix of the key")
    # data is stored as given (no NUL needed, embedded NULs kept)
    eq(_set(svc, "kv/raw", b"a\0b\0c"), (OK, b""), "SET_STATUS with embedded NULs")
    eq(_get(svc, "kv/raw"), (OK, b"a\0b\0c"), "GET_STATUS with embedded NULs")
    # empty data deletes
    eq(_set(svc, "kv/foo", b""), (OK, b""), "SET_STATUS kv/foo empty")
    eq(_get(svc, "kv/foo"), (ENOENT, b""), "GET_STATUS kv/foo after the delete")
    eq(_set(svc, "kv/never", b""), (OK, b""), "SET_STATUS empty for a key that does not exist")
    # size limit 32 KiB
    eq(_set(svc, "kv/big", b"x" * 32769), (EFBIG, b""), "SET_STATUS 32769 bytes")
    eq(_get(svc, "kv/big"), (ENOENT, b""), "GET_STATUS after the EFBIG")
    big = bytes(range(256)) * 128
    eq(len(big), 32768, "test data size")
    eq(_set(svc, "kv/big", big), (OK, b""), "SET_STATUS 32768 bytes")
    eq(_get(svc, "kv/big"), (OK, big), "GET_STATUS of the 32768 bytes")
    eq(_set(svc, "kv/big", b"y" * 32769), (EFBIG, b""), "SET_STATUS 32769 bytes over an existing key")
    eq(_get(svc, "kv/big"), (OK, big), "GET_STATUS after the EFBIG over an existing key")


def test_status_payload_parsing(t):
    """SET_STATUS needs name[256] (shorter -EINVAL), GET_STATUS name[256]+node[256] (shorter -EINVAL); a 256-byte name without NUL is cut to 255 bytes (server.c forces name[255] = 0); bytes after GET_STATUS's node are ignored."""
    d = t.daemon()
    svc = d.ipc_name
    res = qb.calls(
        svc,
        [
            (qb.OP_SET_STATUS, b""),
            (qb.OP_SET_STATUS, b"kv/foo\0"),
            (qb.OP_SET_STATUS, b"k" * 255),
            (qb.OP_GET_STATUS, b""),
            (qb.OP_GET_STATUS, qb.name256("kv/foo")),
            (qb.OP_GET_STATUS, qb.name256("kv/foo") + b"\0" * 255),
        ],
        what="short status payloads",
    )
    eq([e for e, _ in res], [EINVAL] * 6, "errors of short SET/GET_STATUS payloads")
    # exactly 256 bytes of name and no data: an empty set (delete), success
    eq(qb.call(svc, qb.OP_SET_STATUS, qb.name256("kv/x")), (OK, b""), "SET_STATUS with name only")
    long = "k" * 256
    eq(_set(svc, long, b"v\0"), (OK, b""), "SET_STATUS with a 256-byte name without NUL")
    eq(_get(svc, "k" * 255), (OK, b"v\0"), "GET_STATUS of the first 255 bytes of that name")
    eq(_get(svc, long), (OK, b"v\0"), "GET_STATUS with the 256-byte name (also cut to 255)")
    eq(_get(svc, "k" * 255, "testnode" + "x" * 248), (ENOENT, b""), "GET_STATUS with a 256-byte node name")
    eq(
        qb.call(svc, qb.OP_GET_STATUS, get_status("k" * 255, "testnode") + b"trailing bytes"),
        (OK, b"v\0"),
        "GET_STATUS with bytes after the node field",
    )


def test_kvstore_versions_in_dot_version(t):
    """The kvstore block of .version lists the local node's keys: a new key has version 0, each set +1 (identical data too); a delete drops it."""
    d = t.daemon()
    svc = d.ipc_name
    raw, kv = _kvstore_block(d)
    eq(raw, '"kvstore": {\n"testnode": {\n}\n}\n}\n', "kvstore block of a fresh daemon")
    eq(_set(svc, "kv/foo", b"bar\0"), (OK, b""), "first SET_STATUS")
    raw, kv = _kvstore_block(d)
    eq(raw, '"kvstore": {\n"testnode": {\n"kv/foo": 0}\n}\n}\n', "kvstore block after the first set")
    eq(_set(svc, "kv/foo", b"bar\0"), (OK, b""), "second SET_STATUS, identical data")
    eq(_kvstore_block(d)[1], {"testnode": {"kv/foo": 1}}, "kvstore after an identical second set")
    eq(_set(svc, "kv/foo", b"baz\0"), (OK, b""), "third SET_STATUS")
    eq(_set(svc, "kv/other", b"1\0"), (OK, b""), "SET_STATUS kv/other")
    eq(_kvstore_block(d)[1], {"testnode": {"kv/foo": 2, "kv/other": 0}}, "kvstore with two keys")
    eq(_set(svc, "kv/foo", b""), (OK, b""), "delete kv/foo")
    eq(_kvstore_block(d)[1], {"testnode": {"kv/other": 0}}, "kvstore after the delete")
    eq(_set(svc, "kv/foo", b"new\0"), (OK, b""), "set kv/foo again")
    eq(_kvstore_block(d)[1], {"testnode": {"kv/foo": 0, "kv/other": 0}}, "a re-created key starts at 0 again")
    # rejected sets change nothing
    eq(_set(svc, "kv/foo", b"x" * 32769), (EFBIG, b""), "EFBIG set")
    eq(_kvstore_block(d)[1], {"testnode": {"kv/foo": 0, "kv/other": 0}}, "kvstore after the EFBIG set")
    # IPC op 1 shows the same
    eq(qb.ok(svc, qb.OP_GET_FS_VERSION), read(d.path(".version")), "op 1 vs .version with kv keys")


def test_nodeip_bumps_members_version(t):
    """SET_STATUS(nodeip) bumps the .members version and .version clinfo (new or changed IP only) and is not a kv key."""
    d = t.daemon()
    svc = d.ipc_name
    m0 = _members_version(d)
    c0 = json.loads(read(d.path(".version")))["clinfo"]
    eq(_set(svc, "nodeip", b"10.0.0.1\0"), (OK, b""), "SET_STATUS nodeip")
    eq(_members_version(d), m0 + 1, ".members version after nodeip")
    eq(json.loads(read(d.path(".version")))["clinfo"], c0 + 1, ".version clinfo after nodeip")
    eq(_set(svc, "nodeip", b"10.0.0.1\0"), (OK, b""), "SET_STATUS nodeip, same IP")
    eq(_members_version(d), m0 + 1, ".members version after the same IP again")
    eq(_set(svc, "nodeip", b"10.0.0.2\0"), (OK, b""), "SET_STATUS nodeip, new IP")
    eq(_members_version(d), m0 + 2, ".members version after a new IP")
    eq(_get(svc, "nodeip"), (ENOENT, b""), "GET_STATUS nodeip (not a kv key)")
    eq(_kvstore_block(d)[1], {"testnode": {}}, "kvstore after nodeip sets")
    eq(qb.ok(svc, qb.OP_GET_CLUSTER_INFO), read(d.path(".members")), "op 2 vs .members")


def test_nodeip_malformed_enomem(t):
    """Malformed nodeip data (no final NUL, empty, 256 bytes or more: status.c nodeip_hash_set len < 256) is -ENOMEM and changes nothing."""
    d = t.daemon()
    svc = d.ipc_name
    eq(_set(svc, "nodeip", b"10.0.0.1\0"), (OK, b""), "valid nodeip")
    m0 = _members_version(d)
    cases = [
        (b"10.0.0.9", ENOMEM),
        (b"", ENOMEM),
        (b"1" * 255 + b"\0", ENOMEM),
        (b"10.0.0.9\0x", ENOMEM),
        (b"1" * 4096 + b"\0", ENOMEM),
    ]
    res = qb.calls(svc, [(qb.OP_SET_STATUS, set_status("nodeip", p)) for p, _ in cases], what="bad nodeip")
    bad = [f"{p[:20]!r}... ({len(p)} bytes): {qb.errstr(e)}" for (p, w), (e, _) in zip(cases, res) if e != w]
    check(not bad, "expected ENOMEM: " + "; ".join(bad))
    eq(_members_version(d), m0, ".members version after the refused nodeip sets")
    eq(_set(svc, "nodeip", b"2" * 254 + b"\0"), (OK, b""), "nodeip of 255 bytes incl. NUL")
    eq(_members_version(d), m0 + 1, ".members version after the 255-byte nodeip")


def test_item1_guest_list_op3_matches_vmlist(t):
    """item 1: IPC op 3 equals .vmlist bytes as guest configs come and go; a second node type for a VMID fails EEXIST; rename of 100.conf.tmp.123 to 100.conf works."""
    d = t.daemon()
    svc = d.ipc_name

    def same(what):
        for _ in range(3):
            f1 = read(d.path(".vmlist"))
            ipc = qb.ok(svc, qb.OP_GET_GUEST_LIST, what=f"op 3 {what}")
            f2 = read(d.path(".vmlist"))
            if f1 == f2:
                eq(ipc, f1, f"op 3 vs .vmlist {what}")
                return json.loads(ipc)
        raise TestFailure(f".vmlist kept changing {what}")

    j = same("on a fresh daemon")
    check("ids" not in j, f"fresh .vmlist has ids: {j}")
    for p in ("nodes/testnode/qemu-server", "nodes/testnode/lxc", "nodes/n2/qemu-server", "nodes/n2/lxc"):
        d.makedirs(p)
    write(d.path("nodes/testnode/qemu-server/100.conf"), b"memory: 512\n")
    j = same("after creating 100.conf")
    eq({k: (v["node"], v["type"]) for k, v in j["ids"].items()}, {"100": ("testnode", "qemu")}, "ids after 100.conf")
    write(d.path("nodes/n2/lxc/101.conf"), b"memory: 512\n")
    j = same("after creating n2's 101.conf")
    eq({k: (v["node"], v["type"]) for k, v in j["ids"].items()},
       {"100": ("testnode", "qemu"), "101": ("n2", "lxc")}, "ids after 101.conf")
    before = read(d.path(".vmlist"))
    expect_errno(errno.EEXIST, write, d.path("nodes/n2/lxc/100.conf"), b"x", what="create nodes/n2/lxc/100.conf")
    expect_errno(errno.EEXIST, write, d.path("nodes/testnode/lxc/101.conf"), b"x", what="create nodes/testnode/lxc/101.conf")
    eq(same("after the EEXIST creates"), json.loads(before), ".vmlist after the EEXIST creates")
    os.unlink(d.path("nodes/testnode/qemu-server/100.conf"))
    j = same("after deleting 100.conf")
    eq(sorted(j["ids"]), ["101"], "ids after deleting 100.conf")
    write(d.path("nodes/n2/lxc/100.conf"), b"memory: 1\n")
    j = same("after creating 100.conf as n2's lxc")
    eq((j["ids"]["100"]["node"], j["ids"]["100"]["type"]), ("n2", "lxc"), "100 as lxc on n2")
    os.unlink(d.path("nodes/n2/lxc/100.conf"))
    write(d.path("nodes/testnode/qemu-server/100.conf.tmp.123"), b"memory: 2\n")
    j = same("after writing 100.conf.tmp.123")
    eq(sorted(j["ids"]), ["101"], "ids with only a .tmp file for 100")
    os.rename(d.path("nodes/testnode/qemu-server/100.conf.tmp.123"), d.path("nodes/testnode/qemu-server/100.conf"))
    j = same("after renaming 100.conf.tmp.123 to 100.conf")
    eq((j["ids"]["100"]["node"], j["ids"]["100"]["type"]), ("testnode", "qemu"), "100 after the rename")
    os.unlink(d.path("nodes/n2/lxc/101.conf"))
    os.unlink(d.path("nodes/testnode/qemu-server/100.conf"))
    j = same("after deleting everything")
    check("ids" not in j, f".vmlist still has ids: {j}")
