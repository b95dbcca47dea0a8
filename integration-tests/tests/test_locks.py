"""locks: the priv/lock protocol in local mode (COMPAT.md section 2 "Locks",
section 8; checklist item 4)."""

import errno
import os
import time

from lib import pmxdb
from lib.harness import (
    Daemon,
    TestFailure,
    check,
    eq,
    expect_errno,
    expect_ok,
    timeout,
    wait_for,
    write,
)

LOCK_TIMEOUT = 120  # CFS_LOCK_TIMEOUT


def _lockdir(d):
    d.makedirs("priv/lock")
    return d.path("priv/lock")


@timeout(120)
def test_item4_lock_expiry_after_120s(t):
    """item 4: local mode, 120 s expiry: utime(lock, 0, 0) is EACCES while fresh; after 120 s it deletes the lock (caller sees ENOENT, section 8); an expired lock holding a file gives ENOTEMPTY.

    Runs in the background: started before all other tests, finished after them."""
    d = t.daemon()
    ld = _lockdir(d)
    os.mkdir(os.path.join(ld, "expire"))
    os.mkdir(os.path.join(ld, "expire-full"))
    write(os.path.join(ld, "expire-full", "owner"), b"x")
    t0 = time.monotonic()
    # fresh: unlock request refused, lock stays
    expect_errno(errno.EACCES, os.utime, os.path.join(ld, "expire"), (0, 0), what="utime(fresh lock, 0, 0)")
    check(os.path.isdir(os.path.join(ld, "expire")), "fresh lock deleted by utime(0,0)")
    yield LOCK_TIMEOUT + 3 - (time.monotonic() - t0)
    check(time.monotonic() - t0 > LOCK_TIMEOUT, "internal: resumed too early")
    check(d.alive(), "daemon died while the lock aged")
    expect_errno(errno.ENOENT, os.utime, os.path.join(ld, "expire"), (0, 0), what="utime(expired lock, 0, 0)")
    check("expire" not in os.listdir(ld), "expired lock still listed after utime(0, 0)")
    # the kernel may keep the old dentry for its entry timeout (the C daemon: 1 s)
    wait_for(lambda: not os.path.exists(os.path.join(ld, "expire")), 5, what="the expired lock to disappear")
    expect_errno(
        errno.ENOTEMPTY, os.utime, os.path.join(ld, "expire-full"), (0, 0), what="utime(expired lock holding a file, 0, 0)"
    )
    check(os.path.isdir(os.path.join(ld, "expire-full")), "expired lock holding a file vanished")
    # the lock can be taken again
    expect_ok(os.mkdir, os.path.join(ld, "expire"), what="mkdir of the released lock")
    expect_errno(errno.EACCES, os.utime, os.path.join(ld, "expire"), (0, 0), what="utime(re-taken lock, 0, 0)")


def test_item4_mkdir_lock_then_eexist(t):
    """item 4: mkdir priv/lock/<id> takes the lock; a second mkdir is EEXIST while held."""
    d = t.daemon()
    ld = _lockdir(d)
    os.mkdir(os.path.join(ld, "x"))
    expect_errno(errno.EEXIST, os.mkdir, os.path.join(ld, "x"), what="second mkdir of a held lock")
    eq(os.listdir(ld), ["x"], "lock dir listing")


def test_item4_unlock_request_on_fresh_lock_eacces(t):
    """item 4: utime(lock, 0, 0) on a fresh lock is EACCES (local mode) and the lock stays, mtime unchanged."""
    d = t.daemon()
    ld = _lockdir(d)
    lk = os.path.join(ld, "x")
    os.mkdir(lk)
    mt = os.stat(lk).st_mtime
    expect_errno(errno.EACCES, os.utime, lk, (0, 0), what="utime(lock, 0, 0)")
    check(os.path.isdir(lk), "lock deleted")
    eq(os.stat(lk).st_mtime, mt, "lock mtime after the refused unlock")


def test_item4_refresh_rules(t):
    """item 4: utime(lock, now) refreshes (new mtime >= old, same writer); an older mtime is EACCES."""
    d = t.daemon()
    ld = _lockdir(d)
    lk = os.path.join(ld, "x")
    os.mkdir(lk)
    now = int(time.time())
    expect_ok(os.utime, lk, (now + 5, now + 5), what="utime(lock, now+5)")
    eq(os.stat(lk).st_mtime, now + 5, "mtime after refresh")
    expect_ok(os.utime, lk, (now + 5, now + 5), what="utime(lock, same mtime)")
    expect_errno(errno.EACCES, os.utime, lk, (now - 100, now - 100), what="utime(lock, older mtime)")
    eq(os.stat(lk).st_mtime, now + 5, "mtime after the refused refresh")
    # utime(NULL) = now, older than now+5 -> refused
    expect_errno(errno.EACCES, os.utime, lk, None, what="utime(lock, NULL) older than the current lock mtime")
    # a refresh restarts the 120 s timer: unlock still refused
    expect_errno(errno.EACCES, os.utime, lk, (0, 0), what="utime(refreshed lock, 0, 0)")


def test_item4_lock_holding_file_rmdir_enotempty(t):
    """item 4: a lock dir holding files cannot be deleted: ENOTEMPTY."""
    d = t.daemon()
    ld = _lockdir(d)
    lk = os.path.join(ld, "x")
    os.mkdir(lk)
    write(os.path.join(lk, "owner"), b"me")
    expect_errno(errno.ENOTEMPTY, os.rmdir, lk, what="rmdir(lock holding a file)")
    check(os.path.isdir(lk), "lock gone")


def test_item4_rmdir_releases_lock(t):
    """item 4: rmdir of an empty lock releases it; mkdir takes it again."""
    d = t.daemon()
    ld = _lockdir(d)
    lk = os.path.join(ld, "x")
    os.mkdir(lk)
    os.rmdir(lk)
    check(not os.path.exists(lk), "lock still there after rmdir")
    expect_ok(os.mkdir, lk, what="mkdir after release")
    expect_errno(errno.EACCES, os.utime, lk, (0, 0), what="utime(re-taken lock, 0, 0)")


def test_item4_rename_lock_dir_eacces(t):
    """item 4: renaming a lock dir is EACCES."""
    d = t.daemon()
    ld = _lockdir(d)
    os.mkdir(os.path.join(ld, "x"))
    expect_errno(errno.EACCES, os.rename, os.path.join(ld, "x"), os.path.join(ld, "y"), what="rename lock x -> y")
    expect_errno(errno.EACCES, os.rename, os.path.join(ld, "x"), d.path("priv/x"), what="rename lock out of priv/lock")
    check(os.path.isdir(os.path.join(ld, "x")), "lock moved")


def test_item4_lock_age_counts_from_daemon_start(t):
    """item 4: the lock cache is reset to "now" on open: a lock whose DB mtime is years old is still fresh after a (re)start."""
    tmp = t.tmpdir()
    d0 = Daemon(tmp)
    os.makedirs(os.path.dirname(d0.db), exist_ok=True)
    pmxdb.make_db(
        d0.db,
        [
            (2, 0, 2, 0, 1000000000, 4, "priv", None),
            (3, 2, 3, 0, 1000000000, 4, "lock", None),
            (4, 3, 4, 0, 1000000000, 4, "old", None),
        ],
        version=4,
    )
    d = t.daemon(tmp)
    lk = d.path("priv/lock/old")
    check(os.path.isdir(lk), "lock from the DB not visible")
    eq(os.stat(lk).st_mtime, 1000000000, "lock mtime from the DB")
    expect_errno(errno.EACCES, os.utime, lk, (0, 0), what="utime(old lock right after start, 0, 0)")
    check(os.path.isdir(lk), "old lock deleted right after start")


def test_utime_zero_outside_lock_dir_sets_mtime(t):
    """utime(x, 0, 0) outside priv/lock (and on a file inside it) just sets mtime 0."""
    d = t.daemon()
    ld = _lockdir(d)
    os.mkdir(d.path("plain"))
    os.utime(d.path("plain"), (0, 0))
    eq(os.stat(d.path("plain")).st_mtime, 0, "mtime of a plain dir after utime(0, 0)")
    write(os.path.join(ld, "file"), b"x")
    os.utime(os.path.join(ld, "file"), (0, 0))
    eq(os.stat(os.path.join(ld, "file")).st_mtime, 0, "mtime of a file in priv/lock after utime(0, 0)")
