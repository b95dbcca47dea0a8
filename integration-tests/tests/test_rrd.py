"""rrd: `rrd/<key>` status updates, GET_RRD_DUMP / `.rrd`, and the RRD files
written through a private rrdcached or, without it, through librrd
(COMPAT.md sections 3, 5, 6 and 8; checklist item 9).

The expiry of dump entries after 300 s is too slow for this suite; it is
covered by the pmxcfs-rrd unit test `dump::tests::entries_expire_after_300_seconds`.
"""

import math
import os
import shutil
import signal
import subprocess
import time

from lib import harness, qb
from lib.harness import TestFailure, check, eq, read, wait_for
from lib.qb import EFBIG, ENOMEM, OK, set_status

NODE_DS = [
    "loadavg", "maxcpu", "cpu", "iowait", "memtotal", "memused", "swaptotal", "swapused",
    "roottotal", "rootused", "netin", "netout", "memavailable", "arcsize", "pressurecpusome",
    "pressureiosome", "pressureiofull", "pressurememorysome", "pressurememoryfull",
]
VM_DS = [
    "maxcpu", "cpu", "maxmem", "mem", "maxdisk", "disk", "netin", "netout", "diskread", "diskwrite",
    "memhost", "pressurecpusome", "pressurecpufull", "pressureiosome", "pressureiofull",
    "pressurememorysome", "pressurememoryfull",
]
STORAGE_DS = ["total", "used"]
DERIVE = {"netin", "netout", "diskread", "diskwrite"}
RRAS = [(cf, steps, rows) for cf in ("AVERAGE", "MAX") for steps, rows in ((1, 1440), (30, 1440), (360, 1440), (10080, 570))]


def _tool(name):
    p = shutil.which(name)
    if p is None:
        raise TestFailure(f"{name} not found: apt-get install -y rrdtool rrdcached")
    return p


def _run_tool(*args):
    p = subprocess.run([_tool("rrdtool")] + [str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    if p.returncode != 0:
        raise TestFailure(f"rrdtool {' '.join(map(str, args))} failed: {p.stderr.decode(errors='replace').strip()}")
    return p.stdout.decode()


def _rrdcached(t, tmp):
    """Start a private rrdcached (foreground child); it is killed at the end of the test."""
    exe = _tool("rrdcached")
    base = os.path.join(tmp.path, "rrd")
    journal = os.path.join(tmp.path, "journal")
    os.makedirs(base, exist_ok=True)
    os.makedirs(journal, exist_ok=True)
    sock = os.path.join(tmp.path, "rrdcached.sock")
    log = open(os.path.join(tmp.path, "rrdcached.log"), "ab")
    argv = [exe, "-g", "-l", f"unix:{sock}", "-b", base, "-B", "-p", os.path.join(tmp.path, "rrdcached.pid"), "-j", journal, "-F"]
    try:
        p = subprocess.Popen(harness.with_pdeathsig(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/", start_new_session=True)
    finally:
        log.close()
    pw = harness.ProcWatch(p.pid, p)
    harness.register_proc(pw)
    t.stack.callback(harness.kill_proc, pw, 2.0)

    def up():
        if pw.poll() is not None:
            raise TestFailure(f"rrdcached exited with {pw.returncode}: {read(os.path.join(tmp.path, 'rrdcached.log'))[-300:]!r}")
        return os.path.exists(sock)

    wait_for(up, 10, what="the rrdcached socket")
    return pw, sock


def _node_value(uptime, t, vals):
    return f"{uptime}:0:{t}:" + ":".join(map(str, vals))


def _vm_value(uptime, t, vals):
    return f"{uptime}:vm100:running:0:{t}:" + ":".join(map(str, vals))


def _storage_value(t, vals):
    return f"{t}:" + ":".join(map(str, vals))


def _check_info(path, ds_names, what):
    info = {}
    for line in _run_tool("info", path).splitlines():
        k, _, v = line.partition(" = ")
        info[k] = v.strip().strip('"')
    eq(info.get("step"), "60", f"{what}: step")
    names = sorted((int(v), k[3:-7]) for k, v in info.items() if k.startswith("ds[") and k.endswith("].index"))
    eq([n for _, n in names], ds_names, f"{what}: DS names in order ({len(ds_names)})")
    bad = []
    for n in ds_names:
        want = ("DERIVE" if n in DERIVE else "GAUGE", "120", "0.0000000000e+00", "NaN")
        got = tuple(info.get(f"ds[{n}].{f}") for f in ("type", "minimal_heartbeat", "min", "max"))
        if got != want:
            bad.append(f"{n}: (type, heartbeat, min, max) = {got}, expected {want}")
    check(not bad, f"{what}: " + "; ".join(bad))
    rras = []
    i = 0
    while f"rra[{i}].cf" in info:
        rras.append((info[f"rra[{i}].cf"], int(info[f"rra[{i}].pdp_per_row"]), int(info[f"rra[{i}].rows"])))
        eq(float(info[f"rra[{i}].xff"]), 0.5, f"{what}: rra[{i}].xff")
        i += 1
    eq(rras, RRAS, f"{what}: RRAs (cf, steps, rows)")


def _lastupdate(path):
    out = [l for l in _run_tool("lastupdate", path).splitlines() if l.strip()]
    names = out[0].split()
    ts, _, vals = out[1].partition(":")
    return names, int(ts), vals.split()


def _check_lastupdate(path, ds_names, ts, given, what):
    """The last update: timestamp ts, the given values, then U for the padding."""
    names, got_ts, vals = _lastupdate(path)
    eq(names, ds_names, f"{what}: lastupdate DS names")
    eq(got_ts, ts, f"{what}: lastupdate timestamp")
    want = [str(v) for v in given] + ["U"] * (len(ds_names) - len(given))
    got = vals
    same = len(got) == len(want) and all(
        g == w if w == "U" else (g != "U" and math.isclose(float(g), float(w))) for g, w in zip(got, want)
    )
    check(same, f"{what}: lastupdate values {got}, expected {want}")


def _check_fetch(path, ds_names, t0, t1, expected, what):
    """AVERAGE, 60 s resolution, row t1: the expected numbers, then unknown (nan) for the padding."""
    out = _run_tool("fetch", path, "AVERAGE", "-r", 60, "-s", t0, "-e", t1).splitlines()
    eq(out[0].split(), ds_names, f"{what}: fetch DS names")
    rows = {}
    for line in out[1:]:
        if ":" in line:
            ts, _, vals = line.partition(":")
            rows[int(ts)] = [float(v) for v in vals.split()]
    check(t1 in rows, f"{what}: fetch has no row {t1}: {sorted(rows)}")
    row = rows[t1]
    eq(len(row), len(ds_names), f"{what}: fetch column count")
    bad = []
    for i, (n, v) in enumerate(zip(ds_names, row)):
        if i < len(expected):
            if math.isnan(v) or not math.isclose(v, expected[i], rel_tol=1e-9):
                bad.append(f"{n}={v} (expected {expected[i]})")
        elif not math.isnan(v):
            bad.append(f"{n}={v} (expected unknown)")
    check(not bad, f"{what}: fetch row {t1}: " + ", ".join(bad))


def _set(svc, key, value, what=None):
    return qb.call(svc, qb.OP_SET_STATUS, set_status(key, value), what=what or f"SET_STATUS {key}")


def _dump(svc):
    data = qb.ok(svc, qb.OP_GET_RRD_DUMP, what="GET_RRD_DUMP")
    check(data.endswith(b"\0") and not data.endswith(b"\0\0") and data.count(b"\0") == 1,
          f"GET_RRD_DUMP must end with exactly one NUL: ...{data[-40:]!r}")
    return data


def _dump_lines(data):
    text = data.rstrip(b"\0").decode()
    check(text == "" or text.endswith("\n"), f"dump does not end with a newline: {text[-40:]!r}")
    return sorted(text.splitlines())


@harness.timeout(90)
def test_item9_rrdcached_node_vm_storage(t):
    """item 9: with a private rrdcached, SET_STATUS rrd/pve2-node/N, rrd/pve2.3-vm/ID and rrd/pve2-storage/N/S show in GET_RRD_DUMP (trailing NUL) and .rrd (none), create pve-*-9.0 files (step 60, DS lists, RRAs) that get the values with 7 padded U after rrdcached flushes; without rrdcached librrd writes directly."""
    tmp = t.tmpdir()
    rrdcached, sock = _rrdcached(t, tmp)
    d = t.daemon(tmp, extra_args=["--rrdcached-socket", sock])
    svc = d.ipc_name
    rrd = d.rrd_dir
    s1 = (int(time.time()) // 60 + 2) * 60  # a step boundary, in the future: after the file's start
    s0 = s1 - 60
    node0 = [0.5, 4, 0.25, 0.01, 8000000000, 2000000000, 1000000000, 0, 50000000000, 10000000000, 1000, 2000]
    node1 = [1.5, 4, 0.75, 0.02, 8000000000, 3000000000, 1000000000, 5000, 50000000000, 12000000000, 7000, 5000]
    vm0 = [2, 0.1, 4294967296, 1073741824, 34359738368, 0, 100, 200, 300, 400]
    vm1 = [2, 0.3, 4294967296, 2147483648, 34359738368, 0, 6100, 3200, 1500, 4000]
    st0 = [1000000000, 100000]
    st1 = [1000000000, 400000]
    updates = [
        ("pve2-node/testnode", _node_value(1000, s0, node0), _node_value(1060, s1, node1)),
        ("pve2.3-vm/100", _vm_value(500, s0, vm0), _vm_value(560, s1, vm1)),
        ("pve2-storage/testnode/local", _storage_value(s0, st0), _storage_value(s1, st1)),
    ]
    for key, v0, v1 in updates:
        eq(_set(svc, f"rrd/{key}", v0 + "\0"), (OK, b""), f"SET_STATUS rrd/{key} at {s0}")
        eq(_set(svc, f"rrd/{key}", v1 + "\0"), (OK, b""), f"SET_STATUS rrd/{key} at {s1}")
    data = _dump(svc)
    eq(_dump_lines(data), sorted(f"{k}:{v1}" for k, _, v1 in updates), "GET_RRD_DUMP lines")
    fuse = read(d.path(".rrd"))
    eq(fuse, data[:-1], ".rrd vs GET_RRD_DUMP without its NUL")
    files = {
        "node": (os.path.join(rrd, "pve-node-9.0", "testnode"), NODE_DS),
        "vm": (os.path.join(rrd, "pve-vm-9.0", "100"), VM_DS),
        "storage": (os.path.join(rrd, "pve-storage-9.0", "testnode", "local"), STORAGE_DS),
    }
    for what, (path, _) in files.items():
        check(os.path.isfile(path), f"{what} RRD file {path} not created")
    # the updates sit in rrdcached (the daemon used it): the files have no data yet
    for what, (path, names) in files.items():
        _, ts, _ = _lastupdate(path)
        check(ts < s0, f"{what}: the file already has the update of {ts} before rrdcached flushed (rrdcached bypassed?)")
    # FLUSH: SIGTERM makes rrdcached (-F) write everything
    rrdcached.signal(signal.SIGTERM)
    check(rrdcached.wait(15) is not None, "rrdcached did not exit within 15s of SIGTERM")
    if os.path.exists(sock):
        os.unlink(sock)
    _check_info(files["node"][0], NODE_DS, "pve-node-9.0/testnode")
    _check_info(files["vm"][0], VM_DS, "pve-vm-9.0/100")
    _check_info(files["storage"][0], STORAGE_DS, "pve-storage-9.0/testnode/local")
    _check_lastupdate(files["node"][0], NODE_DS, s1, node1, "node")
    _check_lastupdate(files["vm"][0], VM_DS, s1, vm1, "vm")
    _check_lastupdate(files["storage"][0], STORAGE_DS, s1, st1, "storage")

    def rates(a, b, names):
        return [(y - x) / 60 if n in DERIVE else y for n, x, y in zip(names, a, b)]

    _check_fetch(files["node"][0], NODE_DS, s0, s1, rates(node0, node1, NODE_DS), "node")
    _check_fetch(files["vm"][0], VM_DS, s0, s1, rates(vm0, vm1, VM_DS), "vm")
    _check_fetch(files["storage"][0], STORAGE_DS, s0, s1, st1, "storage")
    # rrdcached gone (socket absent): librrd writes directly
    s2 = s1 + 60
    node2 = [2.5, 4, 0.5, 0.03, 8000000000, 3500000000, 1000000000, 0, 50000000000, 13000000000, 13000, 8000]
    vm2 = [2, 0.2, 4294967296, 1073741824, 34359738368, 0, 12100, 6200, 2700, 7600]
    st2 = [1000000000, 500000]
    eq(_set(svc, "rrd/pve2-node/testnode", _node_value(1120, s2, node2) + "\0"), (OK, b""), "node update without rrdcached")
    eq(_set(svc, "rrd/pve2.3-vm/100", _vm_value(620, s2, vm2) + "\0"), (OK, b""), "vm update without rrdcached")
    eq(_set(svc, "rrd/pve2-storage/testnode/local", _storage_value(s2, st2) + "\0"), (OK, b""), "storage update without rrdcached")
    _check_lastupdate(files["node"][0], NODE_DS, s2, node2, "node via librrd")
    _check_lastupdate(files["vm"][0], VM_DS, s2, vm2, "vm via librrd")
    _check_lastupdate(files["storage"][0], STORAGE_DS, s2, st2, "storage via librrd")
    # the current key format (19 columns, no padding) and a newer one (more columns, cut to 19)
    s3, s4 = s2 + 60, s2 + 120
    node3 = node2 + [7000000000, 100000000, 0.1, 0.2, 0.3, 0.4, 0.5]
    node4 = [3.5, 4, 0.5, 0.04, 8000000000, 3600000000, 1000000000, 0, 50000000000, 13100000000, 19000, 11000,
             6900000000, 200000000, 1.1, 1.2, 1.3, 1.4, 1.5, 99, 98]
    eq(_set(svc, "rrd/pve-node-9.0/testnode", _node_value(1180, s3, node3) + "\0"), (OK, b""), "pve-node-9.0 key")
    _check_lastupdate(files["node"][0], NODE_DS, s3, node3, "pve-node-9.0 key (19 columns)")
    eq(_set(svc, "rrd/pve-node-9.1/testnode", _node_value(1240, s4, node4) + "\0"), (OK, b""), "pve-node-9.1 key")
    _check_lastupdate(files["node"][0], NODE_DS, s4, node4[:19], "pve-node-9.1 key (21 columns cut to 19)")
    # a key never seen before creates its file and writes it without rrdcached too
    eq(_set(svc, "rrd/pve2-node/other", _node_value(10, s2, node2) + "\0"), (OK, b""), "new node key without rrdcached")
    other = os.path.join(rrd, "pve-node-9.0", "other")
    check(os.path.isfile(other), f"{other} not created without rrdcached")
    _check_info(other, NODE_DS, "pve-node-9.0/other")
    _check_lastupdate(other, NODE_DS, s2, node2, "new node via librrd")


def test_item9_dump_fresh_malformed_unknown(t):
    """item 9: a fresh entry is in GET_RRD_DUMP (one trailing NUL, also from the 2 s cache, which hides newer entries) and .rrd (no NUL); malformed data (no NUL, empty, 4096 bytes) -ENOMEM and keeps the old entry; > 32768 -EFBIG; unknown keys are accepted into the dump."""
    tmp = t.tmpdir()
    d = t.daemon(tmp, extra_args=["--rrdcached-socket", os.path.join(tmp.path, "no-rrdcached.sock")])
    svc = d.ipc_name
    now = int(time.time())
    good = _node_value(100, now, [0.5, 4, 0.25, 0.01, 8000000000, 2000000000, 1000000000, 0, 50000000000, 10000000000, 1000, 2000])
    long_val = "x" * 4094
    cases = [
        ("rrd/pve2-node/testnode", good + "\0", OK),
        ("rrd/pve2-node/testnode", good, ENOMEM),  # no NUL
        ("rrd/pve2-node/testnode", "", ENOMEM),
        ("rrd/pve2-node/testnode", "1" * 4095 + "\0", ENOMEM),  # 4096 bytes
        ("rrd/pve2-node/testnode", "1" * 32769, EFBIG),
        ("rrd/foo/bar", "hello\0", OK),  # unknown key
        ("rrd/pve2-node/bad", "garbage\0", OK),  # value librrd would refuse: still in the dump
        ("rrd/unknown/long", long_val + "\0", OK),  # 4095 bytes incl. NUL
    ]
    res = qb.calls(svc, [(qb.OP_SET_STATUS, set_status(k, v)) for k, v, _ in cases], what="rrd SET_STATUS")
    bad = [f"{k} ({len(v)} bytes): {qb.errstr(e)} (expected {qb.errstr(w)})" for (k, v, w), (e, _) in zip(cases, res) if e != w]
    check(not bad, "; ".join(bad))
    want = sorted([f"pve2-node/testnode:{good}", "foo/bar:hello", "pve2-node/bad:garbage", f"unknown/long:{long_val}"])
    data = _dump(svc)
    eq(_dump_lines(data), want, "GET_RRD_DUMP lines")
    # the dump is cached for 2 s: an entry set within the same second or the next is not in it yet
    t0 = time.time()
    data = _dump(svc)
    eq(_set(svc, "rrd/late/key", "1\0"), (OK, b""), "SET_STATUS rrd/late/key")
    again = _dump(svc)
    if time.time() - t0 < 1.0:
        eq(again, data, "GET_RRD_DUMP within 2 s (cached: without rrd/late/key, still with its NUL)")
    time.sleep(2.1)
    eq(_dump_lines(_dump(svc)), sorted(want + ["late/key:1"]), "GET_RRD_DUMP after the 2 s cache")
    data = _dump(svc)
    fuse = read(d.path(".rrd"))
    check(b"\0" not in fuse, f".rrd has a NUL: {fuse[-40:]!r}")
    eq(fuse, data[:-1], ".rrd vs GET_RRD_DUMP without its NUL")
    check(os.path.isfile(os.path.join(d.rrd_dir, "pve-node-9.0", "testnode")), "pve-node-9.0/testnode not created by the good update")
    _check_lastupdate(os.path.join(d.rrd_dir, "pve-node-9.0", "testnode"), NODE_DS, now,
                      [0.5, 4, 0.25, 0.01, 8000000000, 2000000000, 1000000000, 0, 50000000000, 10000000000, 1000, 2000], "node via librrd")
    check(not os.path.exists(os.path.join(d.rrd_dir, "pve-node-9.0", "bad")), "a file was created for the bad value (values are checked first)")
    eq(sorted(os.listdir(d.rrd_dir)), ["pve-node-9.0"], "RRD dirs (unknown keys create nothing)")
