"""concurrency: FUSE requests are served in parallel; a request held
inside the daemon blocks only what must be ordered after it; answered
writes are seen by every later read; nothing is lost or answered twice."""

import errno
import os
import random
import sqlite3
import threading
import time

from lib import qb
from lib.harness import (
    TestFailure,
    check,
    eq,
    read,
    timeout,
    write,
)


def _hold_db_write_lock(db_path, seconds, held):
    """Take SQLite's write lock on the daemon's database from outside (a
    real blocker: the daemon's next commit waits for it, up to its busy
    timeout), hold it, release it."""
    con = sqlite3.connect(db_path, timeout=5, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(seconds)
        con.execute("ROLLBACK")
    finally:
        con.close()


@timeout(60)
def test_reads_proceed_while_a_write_waits_for_the_disk(t):
    """A write held inside the daemon (its SQLite commit waits for a lock taken from outside) does not stop reads, stat, readdir and IPC reads of other files; the write completes afterwards and is then seen."""
    d = t.daemon()
    for i in range(20):
        write(d.path(f"f{i}.cfg"), f"content {i}\n".encode())
    write(d.path("w.cfg"), b"before\n")
    held = threading.Event()
    blocker = threading.Thread(target=_hold_db_write_lock, args=(d.db, 3.0, held))
    blocker.start()
    try:
        check(held.wait(5), "could not take the database write lock")
        done = {}

        def writer():
            t0 = time.monotonic()
            try:
                write(d.path("w.cfg"), b"after\n")
                done["result"] = "ok"
            except OSError as e:
                done["result"] = f"error {e}"
            done["took"] = time.monotonic() - t0

        wt = threading.Thread(target=writer)
        wt.start()
        time.sleep(0.3)  # the write is now waiting inside the daemon
        check("result" not in done, f"the write did not wait for the held lock: {done}")
        t0 = time.monotonic()
        for i in range(20):
            eq(read(d.path(f"f{i}.cfg")), f"content {i}\n".encode(), f"read f{i}.cfg")
            os.stat(d.path(f"f{i}.cfg"))
        names = os.listdir(d.mount)
        check("f0.cfg" in names, "readdir while a write waits")
        eq(qb.ok(d.ipc_name, qb.OP_GET_CONFIG, qb.cstr("f3.cfg")), b"content 3\n", "IPC read")
        took = time.monotonic() - t0
        check("result" not in done, "the write finished before the reads: the blocker did not hold it")
        t.note(f"# 20 reads + 20 stats + readdir + IPC read while a write waited: {took * 1000:.0f} ms")
        check(took < 1.5, f"reads took {took:.2f}s while a write waited (they waited for it)")
        wt.join(15)
        eq(done.get("result"), "ok", "the held write")
        check(done["took"] >= 2.0, f"the write took {done['took']:.2f}s: it was not held")
    finally:
        blocker.join(10)
    eq(read(d.path("w.cfg")), b"after\n", "the write is seen after it was answered")


def _child(fn):
    """Run fn in a forked child; return its pid. The child exits 0 on
    success, 1 on a failure (message on stderr)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - report everything
            os.write(2, f"child {os.getpid()}: {e!r}\n".encode())
            code = 1
        os._exit(code)
    return pid


def _wait_children(pids, what, limit=120):
    deadline = time.monotonic() + limit
    bad = []
    for pid in pids:
        while True:
            r, status = os.waitpid(pid, os.WNOHANG)
            if r:
                break
            if time.monotonic() > deadline:
                for p in pids:
                    try:
                        os.kill(p, 9)
                    except OSError:
                        pass
                raise TestFailure(f"{what}: children still running after {limit}s")
            time.sleep(0.05)
        if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
            bad.append(pid)
    check(not bad, f"{what}: {len(bad)} of {len(pids)} children failed (see stderr)")


@timeout(90)
def test_answered_write_seen_by_later_read_in_another_process(t):
    """Several writer/reader process pairs, many rounds: once a write is answered, a read started after it in another process returns it."""
    d = t.daemon()
    pairs = 3
    rounds = 400
    pids = []
    for k in range(pairs):
        path = d.path(f"seq{k}.cfg")
        write(path, b"%08d\n" % 0)
        r, w = os.pipe()

        def writer(path=path, w=w, r=r):
            os.close(r)
            # fixed-width in place (no O_TRUNC), so every state is a number
            for n in range(1, rounds + 1):
                write(path, b"%08d\n" % n, os.O_WRONLY)
                os.write(w, n.to_bytes(4, "little"))
            os.close(w)

        def reader(path=path, r=r, w=w):
            os.close(w)
            f = os.fdopen(r, "rb", buffering=0)
            while True:
                b = f.read(4)
                if len(b) < 4:
                    break
                n = int.from_bytes(b, "little")
                got = int(read(path).decode().strip())
                if got < n:
                    raise AssertionError(f"{path}: read {got} after write {n} was answered")

        pids.append(_child(writer))
        pids.append(_child(reader))
        os.close(r)
        os.close(w)
    _wait_children(pids, "writer/reader pairs")


MIXED = ["create", "overwrite", "append", "truncate", "rename", "unlink", "mkdir", "rmdir", "read", "stat", "list"]


def _mixed_worker(root, seed, seconds, out_path):
    """Mixed operations in the worker's own directory, against a model of
    what must be there; writes the final model to out_path."""
    rng = random.Random(seed)
    model = {}  # relative name -> bytes (files) or None (dirs)
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        op = rng.choice(MIXED)
        files = [k for k, v in model.items() if v is not None]
        dirs = [k for k, v in model.items() if v is None]
        n += 1
        if op == "create" or (op in ("overwrite", "append", "truncate", "rename", "unlink", "read", "stat") and not files):
            name = f"f{rng.randrange(40)}"
            if name in model:
                continue
            data = os.urandom(rng.choice([0, 10, 300, 5000]))
            tmp = os.path.join(root, f"{name}.tmp.{os.getpid()}")
            write(tmp, data, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            os.rename(tmp, os.path.join(root, name))
            model[name] = data
        elif op == "overwrite":
            name = rng.choice(files)
            data = os.urandom(rng.choice([0, 7, 4096, 9000]))
            write(os.path.join(root, name), data)
            model[name] = data
        elif op == "append":
            name = rng.choice(files)
            data = os.urandom(rng.randrange(1, 200))
            fd = os.open(os.path.join(root, name), os.O_WRONLY | os.O_APPEND)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            model[name] = model[name] + data
        elif op == "truncate":
            name = rng.choice(files)
            size = rng.randrange(0, 6000)
            os.truncate(os.path.join(root, name), size)
            old = model[name]
            model[name] = old[:size] + b"\0" * max(0, size - len(old))
        elif op == "rename":
            name = rng.choice(files)
            new = f"f{rng.randrange(40)}"
            if model.get(new, b"") is None:
                continue  # a directory of that name
            os.rename(os.path.join(root, name), os.path.join(root, new))
            if new != name:
                model[new] = model.pop(name)
        elif op == "unlink":
            name = rng.choice(files)
            os.unlink(os.path.join(root, name))
            del model[name]
        elif op == "mkdir":
            name = f"d{rng.randrange(10)}"
            if name in model:
                continue
            os.mkdir(os.path.join(root, name))
            model[name] = None
        elif op == "rmdir":
            if not dirs:
                continue
            name = rng.choice(dirs)
            os.rmdir(os.path.join(root, name))
            del model[name]
        elif op == "read":
            name = rng.choice(files)
            got = read(os.path.join(root, name))
            if got != model[name]:
                raise AssertionError(f"{name}: read {len(got)} bytes, model has {len(model[name])}")
        elif op == "stat":
            name = rng.choice(files)
            st = os.stat(os.path.join(root, name))
            if st.st_size != len(model[name]):
                raise AssertionError(f"{name}: size {st.st_size}, model {len(model[name])}")
        elif op == "list":
            got = sorted(os.listdir(root))
            if got != sorted(model):
                raise AssertionError(f"listing {got} != model {sorted(model)}")
    with open(out_path, "w") as f:
        f.write(repr({"ops": n, "model": {k: (None if v is None else v.hex()) for k, v in model.items()}}))


@timeout(120)
def test_eight_processes_mixed_operations_match_the_model(t):
    """8 processes doing mixed operations for 30 s (each in its own directory, all through one mount at once): every answer matches each process's model, and at the end the tree (after a restart too) is exactly the models."""
    import ast
    from lib.harness import Daemon
    tmp = t.tmpdir()
    outs = []
    with Daemon(tmp) as d:
        pids = []
        for k in range(8):
            root = d.path(f"w{k}")
            os.mkdir(root)
            out = tmp.join(f"model{k}")
            outs.append((f"w{k}", out))
            pids.append(_child(lambda root=root, k=k, out=out: _mixed_worker(root, 1000 + k, 30, out)))
        _wait_children(pids, "mixed workers", limit=100)
        models = {}
        total = 0
        for name, out in outs:
            with open(out) as f:
                r = ast.literal_eval(f.read())
            total += r["ops"]
            models[name] = {k: (None if v is None else bytes.fromhex(v)) for k, v in r["model"].items()}
        t.note(f"# 8 processes: {total} operations in 30 s")

        def compare(dd, when):
            for name, model in models.items():
                root = dd.path(name)
                eq(sorted(os.listdir(root)), sorted(model), f"{when}: listing of {name}")
                for k, v in model.items():
                    if v is not None:
                        eq(read(os.path.join(root, k)), v, f"{when}: {name}/{k}")

        compare(d, "live")
    with Daemon(tmp) as d:
        compare(d, "after restart")


@timeout(240)
def test_fuse_view_matches_the_daemon_after_every_change(t):
    """After every change (in-place write, O_TRUNC rewrite, write past EOF, ftruncate, refused write over 1 MiB, rename over the file) a handle held open from before, a fresh open and stat show exactly what the daemon holds (IPC GET_CONFIG); a handle of a replaced file keeps the old bytes. (Guards against kernel caching of file data going stale.)"""
    d = t.daemon()
    mib = 1048576
    rng = random.Random(8)
    a, b = d.path("pc-a.cfg"), d.path("pc-b.cfg")
    write(a, b"start\n")

    def daemon_view():
        return qb.ok(d.ipc_name, qb.OP_GET_CONFIG, qb.cstr("pc-a.cfg"))

    def pread_all(fd):
        return os.pread(fd, 2 * mib, 0)

    held = os.open(a, os.O_RDONLY)
    try:
        eq(pread_all(held), b"start\n", "first read through the held handle")
        for rnd in range(300):
            op = rng.choice(["trunc_write", "pwrite", "past_eof", "ftruncate", "efbig", "rename"])
            if op == "trunc_write":
                write(a, os.urandom(rng.randrange(0, 9000)))
            elif op == "pwrite":
                fd = os.open(a, os.O_WRONLY)
                try:
                    os.pwrite(fd, os.urandom(rng.randrange(1, 5000)), rng.randrange(0, 6000))
                finally:
                    os.close(fd)
            elif op == "past_eof":
                fd = os.open(a, os.O_RDWR)
                try:
                    size = os.fstat(fd).st_size
                    os.pwrite(fd, b"tail", size + rng.randrange(1, 9000))
                finally:
                    os.close(fd)
            elif op == "ftruncate":
                fd = os.open(a, os.O_WRONLY)
                try:
                    os.ftruncate(fd, rng.randrange(0, 12000))
                finally:
                    os.close(fd)
            elif op == "efbig":
                fd = os.open(a, os.O_WRONLY)
                try:
                    os.pwrite(fd, os.urandom(8192), mib - 4096)
                    raise TestFailure("a write crossing 1 MiB was accepted")
                except OSError as e:
                    check(e.errno == errno.EFBIG, f"round {rnd}: write crossing 1 MiB: {e}")
                finally:
                    os.close(fd)
            else:
                old = daemon_view()
                write(b, os.urandom(rng.randrange(0, 9000)))
                os.rename(b, a)
                eq(pread_all(held), old, f"round {rnd}: the held handle of the replaced file")
                os.close(held)
                held = os.open(a, os.O_RDONLY)
            want = daemon_view()
            eq(pread_all(held), want, f"round {rnd} ({op}): read through the held handle")
            eq(read(a), want, f"round {rnd} ({op}): read after a fresh open")
            eq(os.stat(a).st_size, len(want), f"round {rnd} ({op}): stat size")
    finally:
        os.close(held)


@timeout(120)
def test_readers_never_see_a_torn_write(t):
    """A 64 KiB file rewritten in place (one pwrite of 64 KiB, every byte the round's number) by one process while three others read it whole: every read returns one round's bytes, never a mix of two (C and we apply a write as one step, and reads bypass the page cache, which a write fills page by page)."""
    d = t.daemon()
    size = 65536
    path = d.path("torn.cfg")
    write(path, bytes([0]) * size)
    stop = time.monotonic() + 8
    pids = []
    for _ in range(3):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                while time.monotonic() < stop:
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        data = os.pread(fd, size, 0)
                    finally:
                        os.close(fd)
                    if len(data) != size or data.count(data[:1]) != size:
                        code = 3
                        break
            except BaseException:  # noqa: BLE001
                code = 4
            os._exit(code)
        pids.append(pid)
    rounds = 0
    fd = os.open(path, os.O_WRONLY)
    try:
        while time.monotonic() < stop:
            rounds += 1
            os.pwrite(fd, bytes([rounds % 256]) * size, 0)
    finally:
        os.close(fd)
    codes = [os.waitpid(p, 0)[1] for p in pids]
    t.note(f"{rounds} rewrites")
    eq([os.waitstatus_to_exitcode(c) for c in codes], [0, 0, 0],
       "reader exit codes (3: a read mixed two writes)")
