"""cluster: three real corosync nodes in private namespaces, one of our
daemons each with the C daemon's default paths and options (lib/cluster.py);
checklist items 4 (cluster half), 12, 13, 14. With --c-binary, the mixed
tests put the C daemon on one node and on two."""

import errno
import os
import threading
import time

from lib import harness, qb
from lib.cluster import Cluster
from lib.harness import (
    NotRunnableOnC,
    TestFailure,
    check,
    eq,
    expect_errno,
    read,
    timeout,
    wait_for,
    write_all,
)


def ours():
    """The daemon under test (the C daemon in a --c-binary run's C pass)."""
    return harness.binary_path()


def same_everywhere(nodes, rel, data):
    def ok():
        for n in nodes:
            try:
                if read(n.path(rel)) != data:
                    return False
            except OSError:
                return False
        return True
    return ok


def started(c, binaries=None, args=()):
    """Start a daemon on every node (binaries: per node, default ours) and
    wait until all are quorate with everybody online."""
    for n, b in zip(c.nodes, binaries or [ours()] * len(c.nodes)):
        n.start_pmxcfs(b, args=args, wait=False)
    for n in c.nodes:
        n.wait_serving(20)
    c.wait_pmxcfs_ready()
    return c


def print_index(n):
    """Our inspection command on a node's database (read from the host)."""
    import subprocess
    r = subprocess.run([harness.Config.binary, "--print-index", "--db", n.db],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise TestFailure(f"{n.name}: pmxcfs --print-index failed: {r.stderr.strip()}")
    return r.stdout


def quorate_of(n):
    """The `quorate` flag of a node's .members (None if unreadable)."""
    return (n.members() or {}).get("cluster", {}).get("quorate")


def _replication(t, binaries):
    with Cluster(3) as c:
        started(c, binaries)
        n1, n2, n3 = c.nodes
        os.makedirs(n1.path("nodes/n1/qemu-server"), exist_ok=True)
        data = os.urandom(5000)
        write_all(n1.path("storage.cfg"), data)
        wait_for(same_everywhere(c.nodes, "storage.cfg", data), 10, what="storage.cfg on every node")
        write_all(n2.path("nodes/n1/qemu-server/100.conf"), b"memory: 512\n")
        os.rename(n2.path("storage.cfg"), n2.path("storage.cfg.old"))
        os.mkdir(n3.path("ha"))
        os.unlink(n3.path("storage.cfg.old"))
        c.wait_rows_identical()
        for n in c.nodes:
            check(os.path.isdir(n.path("ha")), f"{n.name}: mkdir from n3")
            check(not os.path.exists(n.path("storage.cfg.old")), f"{n.name}: unlink from n3")
            eq(read(n.path("nodes/n1/qemu-server/100.conf")), b"memory: 512\n", f"{n.name}: guest config")
        # writer is the sender's node id, the same everywhere (rows identical)
        rows = {r[6]: r for r in n3.db_rows()}
        eq(rows["100.conf"][3], 2, "writer of a file written on n2")
        vml = [read(n.path(".vmlist")) for n in c.nodes]
        check(all(v == vml[0] for v in vml), f".vmlist differs: {vml}")
        check(b'"100"' in vml[0], f".vmlist lacks 100: {vml[0]!r}")
        mem = [n.members() for n in c.nodes]
        check(all((m or {}).get("cluster", {}).get("quorate") == 1 for m in mem), f".members quorate: {mem}")


@timeout(90)
def test_item12_write_mkdir_rename_unlink_everywhere(t):
    """item 12: writes, mkdir, rename, unlink on any node are on every node with identical bytes, writer and config.db rows; .vmlist and .members agree."""
    _replication(t, None)


@timeout(120)
def test_overwrites_from_other_nodes_reach_cached_readers(t):
    """Files changed by another node are read fresh on this one, through a handle held open from before and through new opens (no kernel page cache may hide a delivered change): 40 overwrites, O_TRUNC rewrites and in-place writes alternating between n2 and n3, each seen on n1 and on the other node."""
    import random
    rng = random.Random(40)
    with Cluster(3) as c:
        started(c)
        n1, n2, n3 = c.nodes
        write_all(n1.path("pc.cfg"), b"start\n")
        wait_for(same_everywhere(c.nodes, "pc.cfg", b"start\n"), 10, what="pc.cfg on every node")
        held = {n: os.open(n.path("pc.cfg"), os.O_RDONLY) for n in (n1, n2, n3)}
        try:
            for n in held:
                eq(os.pread(held[n], 65536, 0), b"start\n", f"{n.name}: first read of the held handle")
            content = b"start\n"
            for rnd in range(40):
                w = (n2, n3)[rnd % 2]
                if rng.random() < 0.5:
                    content = os.urandom(rng.randrange(1, 9000))
                    write_all(w.path("pc.cfg"), content)
                else:
                    off = rng.randrange(0, len(content))
                    patch = os.urandom(rng.randrange(1, 3000))
                    fd = os.open(w.path("pc.cfg"), os.O_WRONLY)
                    try:
                        os.pwrite(fd, patch, off)
                    finally:
                        os.close(fd)
                    content = (content[:off] + patch + content[off + len(patch):])
                for n in (n1, n2, n3):
                    def seen(n=n, content=content):
                        try:
                            return read(n.path("pc.cfg")) == content and \
                                os.pread(held[n], 65536, 0) == content
                        except OSError:
                            return False
                    wait_for(seen, 10, interval=0.01,
                             what=f"round {rnd}: {n.name} reads what {w.name} wrote (fresh open and held handle)")
        finally:
            for fd in held.values():
                os.close(fd)


@timeout(120)
def test_open_trunc_is_seen_at_once_on_its_node_and_everywhere(t):
    """open(O_TRUNC) on n1, answered (our daemon multicasts the truncation without waiting for it, the handle's write follows it in agreed order): a read started right after it by another process on n1 sees the file empty, 40 rounds; closed without a write it is empty on every node, written through the handle it holds that everywhere."""
    with Cluster(3) as c:
        started(c)
        n1 = c.nodes[0]
        path = n1.path("t.cfg")
        go_r, go_w = os.pipe()
        res_r, res_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            # the reader: on each byte, read the file at once, report its size
            code = 0
            try:
                os.close(go_w)
                os.close(res_r)
                while os.read(go_r, 1):
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        n = len(os.read(fd, 1 << 20))
                    finally:
                        os.close(fd)
                    os.write(res_w, n.to_bytes(4, "little"))
            except BaseException:  # noqa: BLE001
                code = 3
            os._exit(code)
        os.close(go_r)
        os.close(res_w)
        try:
            for rnd in range(40):
                write_all(path, f"content {rnd}\n".encode() * 50)
                fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
                try:
                    os.write(go_w, b"g")
                    size = int.from_bytes(os.read(res_r, 4), "little")
                    eq(size, 0, f"round {rnd}: size read by another process right after open(O_TRUNC)")
                    if rnd % 2:
                        os.write(fd, b"new")
                finally:
                    os.close(fd)
                want = b"new" if rnd % 2 else b""
                wait_for(same_everywhere(c.nodes, "t.cfg", want), 10,
                         what=f"round {rnd}: t.cfg {want!r} on every node")
        finally:
            os.close(go_w)
            os.waitpid(pid, 0)
            os.close(res_r)


@timeout(90)
def test_item4_vmid_conflicts_and_locks_across_nodes(t):
    """items 1, 4: a VMID on another node is EEXIST; a lock held on n1 is EEXIST on n2; utime of it on n2 (refresh or unlock request before expiry) is EACCES."""
    with Cluster(3) as c:
        started(c)
        n1, n2, n3 = c.nodes
        for n in ("n1", "n2"):
            os.makedirs(n1.path(f"nodes/{n}/qemu-server"), exist_ok=True)
        os.makedirs(n1.path("priv/lock"), exist_ok=True)
        write_all(n1.path("nodes/n1/qemu-server/100.conf"), b"a\n")
        wait_for(lambda: os.path.exists(n2.path("nodes/n1/qemu-server/100.conf")), 10, what="100.conf on n2")
        expect_errno(errno.EEXIST, write_all, n2.path("nodes/n2/qemu-server/100.conf"), b"b\n",
                     what="VMID 100 on another node")
        os.mkdir(n1.path("priv/lock/backup"))
        wait_for(lambda: os.path.isdir(n2.path("priv/lock/backup")), 10, what="lock on n2")
        expect_errno(errno.EEXIST, os.mkdir, n2.path("priv/lock/backup"), what="lock held by n1")
        expect_errno(errno.EACCES, os.utime, n2.path("priv/lock/backup"), (0, 0),
                     what="unlock request before expiry")
        expect_errno(errno.EACCES, os.utime, n2.path("priv/lock/backup"), None,
                     what="refresh of another node's lock")
        os.utime(n1.path("priv/lock/backup"), None)  # the holder may refresh
        c.wait_rows_identical()


@timeout(150)
def test_item13_concurrent_writers_on_all_nodes(t):
    """item 13: 3 x 300 writes at once, to distinct and to shared files: byte-identical indexes on all nodes."""
    with Cluster(3) as c:
        started(c)
        errors = []

        def writer(n, k):
            try:
                for i in range(300):
                    name = f"own-{k}-{i % 40}" if i % 2 else f"shared-{i % 10}"
                    write_all(n.path(name), f"{k}:{i}\n".encode() * (1 + i % 30))
            except OSError as e:
                errors.append(f"{n.name}: {e}")

        th = [threading.Thread(target=writer, args=(n, k)) for k, n in enumerate(c.nodes)]
        t0 = time.monotonic()
        for x in th:
            x.start()
        for x in th:
            x.join(120)
        took = time.monotonic() - t0
        check(not errors, f"writes failed: {errors[:3]}")
        c.wait_rows_identical(timeout=20)
        t.note(f"# 900 replicated writes from 3 nodes: {took:.2f}s ({900 / took:.0f}/s)")
        # the inspection command: indexes and checksums equal on all nodes
        outs = [print_index(n) for n in c.nodes]
        check(all(o == outs[0] for o in outs), "pmxcfs --print-index differs between nodes")
        check(outs[0].splitlines()[-1].startswith("checksum "), f"no checksum line: {outs[0][-200:]!r}")


@timeout(120)
def test_item13_partition_minority_refuses_then_heals(t):
    """items 2, 13: a partitioned node refuses every mutation with EACCES and still reads; after the heal all indexes are identical and none of the refused attempts exists anywhere."""
    with Cluster(3) as c:
        started(c)
        n1, n2, n3 = c.nodes
        write_all(n1.path("before"), b"x")
        wait_for(same_everywhere(c.nodes, "before", b"x"), 10, what="before on every node")
        n3.partition()
        wait_for(lambda: quorate_of(n3) == 0, 15, what="n3 not quorate")
        expect_errno(errno.EACCES, write_all, n3.path("refused"), b"no", what="write on the minority")
        expect_errno(errno.EACCES, os.mkdir, n3.path("refused-dir"), what="mkdir on the minority")
        eq(read(n3.path("before")), b"x", "read on the minority")
        write_all(n1.path("majority"), b"y")
        n3.heal()
        wait_for(same_everywhere(c.nodes, "majority", b"y"), 20, what="majority's write on n3")
        c.wait_rows_identical(timeout=20)
        for n in c.nodes:
            check(not os.path.exists(n.path("refused")) and not os.path.exists(n.path("refused-dir")),
                  f"{n.name}: a refused attempt exists")


@timeout(120)
def test_kill9_during_write_storm_then_resync(t):
    """kill -9 one daemon during a write storm on another node, restart it over its dead mount: it resyncs, nothing acknowledged on the survivors is lost."""
    with Cluster(3) as c:
        started(c)
        n1, n2, n3 = c.nodes
        acked = {}
        stop = threading.Event()

        def storm():
            i = 0
            while not stop.is_set():
                data = f"{i}\n".encode()
                try:
                    write_all(n1.path(f"storm-{i % 50}"), data)
                    acked[f"storm-{i % 50}"] = data
                except OSError:
                    pass
                i += 1

        th = threading.Thread(target=storm)
        th.start()
        time.sleep(0.5)
        n2.kill9_pmxcfs()
        time.sleep(0.5)
        n2.start_pmxcfs(ours())
        time.sleep(0.5)
        stop.set()
        th.join(30)
        c.wait_pmxcfs_ready()
        c.wait_rows_identical(timeout=20)
        for name, data in acked.items():
            for n in c.nodes:
                eq(read(n.path(name)), data, f"{n.name}: {name} as answered")


@timeout(150)
def test_stopped_node_misses_1000_writes_then_resyncs(t):
    """stop a daemon, write 1,000 files elsewhere, start it: it resyncs to identical rows."""
    with Cluster(3) as c:
        started(c)
        n1, n2, n3 = c.nodes
        eq(n3.stop_pmxcfs(), 0, "n3 stops on SIGTERM")
        for i in range(1000):
            write_all(n1.path(f"f{i}"), f"{i}".encode())
        t0 = time.monotonic()
        n3.start_pmxcfs(ours())
        c.wait_pmxcfs_ready()
        c.wait_rows_identical(timeout=30)
        t.note(f"# resync of 1,000 missed writes: {time.monotonic() - t0:.2f}s")
        eq(read(n3.path("f999")), b"999", "n3 has the last write")


@timeout(120)
def test_corosync_restart_under_a_running_daemon(t):
    """stop and restart corosync under a running daemon: it reconnects (not quorate meanwhile) and resyncs."""
    with Cluster(3) as c:
        started(c)
        n1, n2, n3 = c.nodes
        n2.stop_corosync()
        wait_for(lambda: quorate_of(n2) == 0, 15, what="n2 not quorate without corosync")
        write_all(n1.path("while-away"), b"z")
        n2.start_corosync()
        wait_for(same_everywhere([n2], "while-away", b"z"), 30, what="the write on n2 after corosync came back")
        c.wait_pmxcfs_ready(timeout=30)
        c.wait_rows_identical(timeout=20)
        write_all(n2.path("after"), b"w")
        wait_for(same_everywhere(c.nodes, "after", b"w"), 10, what="n2 writes again")


@timeout(120)
def test_item14_corosync_conf_reaches_every_host(t):
    """item 14: corosync.conf edited on one node (higher config_version) replaces /etc/corosync/corosync.conf on every node; a lower one leaves it."""
    with Cluster(3) as c:
        started(c)
        n1 = c.nodes[0]
        conf = read(n1.path("corosync.conf"))
        check(b"config_version" in conf, f"corosync.conf without config_version: {conf[:200]!r}")
        import re
        ver = int(re.search(rb"config_version:\s*(\d+)", conf).group(1))
        new = re.sub(rb"(config_version:\s*)\d+", b"\\g<1>%d" % (ver + 1), conf)
        new = new.replace(b"token: 500", b"token: 600") if b"token: 500" in new else new
        tmp = n1.path("corosync.conf.new")
        write_all(tmp, new)
        os.rename(tmp, n1.path("corosync.conf"))
        for n in c.nodes:
            wait_for(lambda n=n: read(n.root_path("/etc/corosync/corosync.conf")) == new, 15,
                     what=f"{n.name}: host corosync.conf")


@timeout(90)
def test_sigterm_during_cluster_traffic_exits_within_1s(t):
    """SIGTERM during cluster traffic: every daemon exits 0 within 1 s, every time (5 rounds)."""
    with Cluster(3) as c:
        for rnd in range(5):
            started(c)
            stop = threading.Event()

            def traffic(n):
                i = 0
                while not stop.is_set():
                    try:
                        write_all(n.path(f"t{i % 20}"), b"x" * (i % 500))
                    except OSError:
                        return
                    i += 1

            th = [threading.Thread(target=traffic, args=(n,)) for n in c.nodes]
            for x in th:
                x.start()
            time.sleep(0.3)
            t0 = time.monotonic()
            res = c.stop_pmxcfs(timeout=5)
            took = time.monotonic() - t0
            stop.set()
            for x in th:
                x.join(10)
            eq(res, {n.name: 0 for n in c.nodes}, f"round {rnd}: exit codes")
            check(took < 1.0, f"round {rnd}: stopping took {took:.2f}s")


def _kv_and_log(t, binaries):
    with Cluster(3) as c:
        started(c, binaries)
        n1, n2, n3 = c.nodes
        err, _ = n1.qb_call(qb.OP_SET_STATUS, qb.set_status("kv/test", b"bar\0"))
        eq(err, 0, "SET_STATUS on n1")

        def kv_on(n):
            e, data = n.qb_call(qb.OP_GET_STATUS, qb.get_status("kv/test", "n1"))
            return e == 0 and data == b"bar\0"
        for n in (n2, n3):
            wait_for(lambda n=n: kv_on(n), 10, what=f"{n.name}: GET_STATUS kv/test of n1")
        err, _ = n2.qb_call(qb.OP_LOG_CLUSTER_MSG, qb.log_msg(5, "root@pam", "test", "hello from n2"))
        eq(err, 0, "LOG_CLUSTER_MSG on n2")

        def logged(n):
            e, data = n.qb_call(qb.OP_GET_CLUSTER_LOG, qb.get_log(50, ""))
            return e == 0 and b"hello from n2" in data
        for n in (n1, n3):
            wait_for(lambda n=n: logged(n), 10, what=f"{n.name}: n2's cluster log entry")
        # nodeip of every node shows in .members
        wait_for(lambda: all(all("ip" in v for v in ((n.members() or {}).get("nodelist") or {"x": {}}).values())
                             for n in c.nodes), 10, what="node ips in .members")


@timeout(90)
def test_items8_10_kv_store_and_cluster_log_across_nodes(t):
    """items 8, 10: SET_STATUS on n1 is GET_STATUS(key, n1) on n2 and n3; a LOG_CLUSTER_MSG on n2 is in the cluster log of n1 and n3; every node's IP shows in .members."""
    _kv_and_log(t, None)


@timeout(90)
def test_verify_rounds_succeed_on_every_node(t):
    """VERIFY (--verify-interval 1, ours only): the lowest node's rounds run and every node reports a successful verification (a mismatch makes a node leave: pmxcfs-dfsm machine_tests::verification_detects_divergence)."""
    if harness.c_mode():
        raise NotRunnableOnC("--verify-interval is an option only our daemon has")
    with Cluster(3) as c:
        started(c, args=["--verify-interval", "1"])
        n1, n2, n3 = c.nodes
        write_all(n1.path("a"), b"1")
        c.wait_rows_identical()

        def logged(n, text):
            try:
                with open(n.pmxcfs_log, errors="replace") as f:
                    return text in f.read()
            except OSError:
                return False
        wait_for(lambda: all(logged(n, "data verification successful") for n in c.nodes), 15,
                 what="a successful verification on every node")


@timeout(200)
def test_item4_unlock_request_after_120s_across_nodes(t):
    """item 4, cluster half: a lock taken on n2 and left alone: an unlock request (utime 0, 0) from n3 is refused (EACCES) while fresh; after 120 s the lowest node answers the request with UNLOCK and the lock is gone on every node.

    Runs in the background: started before all other tests, finished after them."""
    c = t.stack.enter_context(Cluster(3))
    started(c)
    n1, n2, n3 = c.nodes
    os.makedirs(n2.path("priv/lock"), exist_ok=True)
    os.mkdir(n2.path("priv/lock/expire"))
    wait_for(lambda: os.path.isdir(n3.path("priv/lock/expire")), 10, what="the lock on n3")
    t0 = time.monotonic()
    expect_errno(errno.EACCES, os.utime, n3.path("priv/lock/expire"), (0, 0), what="unlock request of a fresh lock")
    yield 123 - (time.monotonic() - t0)
    try:
        os.utime(n3.path("priv/lock/expire"), (0, 0))
    except OSError:
        pass  # the request is sent; the MTIME itself fails (lock older or gone)
    for n in c.nodes:
        wait_for(lambda n=n: not os.path.exists(n.path("priv/lock/expire")), 15,
                 what=f"{n.name}: the expired lock removed by the lowest node")
    c.wait_rows_identical()


def _c_binary():
    b = os.environ.get("PMXCFS_C_BINARY") or harness.Config.c_binary
    if not b:
        raise NotRunnableOnC("needs a C pmxcfs (--c-binary PATH or $PMXCFS_C_BINARY)")
    return b


@timeout(120)
def test_mixed_one_c_node(t):
    """items 12, 13: a mixed cluster, the C daemon on n3: replication both ways with identical rows."""
    _replication(t, [ours(), ours(), _c_binary()])


@timeout(120)
def test_mixed_kv_store_and_cluster_log(t):
    """items 8, 10: the kv store and the cluster log across a mixed cluster (C on n3)."""
    _kv_and_log(t, [ours(), ours(), _c_binary()])


@timeout(120)
def test_mixed_two_c_nodes(t):
    """items 12, 13: a mixed cluster, the C daemon on n2 and n3: replication both ways with identical rows."""
    _replication(t, [ours(), _c_binary(), _c_binary()])
