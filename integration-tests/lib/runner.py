"""Test discovery and execution for integration-tests/test."""

import argparse
import contextlib
import errno
import importlib.util
import inspect
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback

from lib import harness
from lib.harness import RunnerInterrupted, TestFailure, TestTimeout

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS_DIR = os.path.join(HERE, "tests")
GROUP_ORDER = ["core", "fuse", "locks", "plugins", "memdb", "ipc", "status", "logger", "rrd"]
DEFAULT_TIMEOUT = 60


# --------------------------------------------------------------------------
# discovery


class TestCase:
    def __init__(self, group, fn):
        self.group = group
        self.fn = fn
        self.name = fn.__name__[len("test_"):]
        self.full = f"{group}.{self.name}"
        self.timeout = getattr(fn, "timeout", DEFAULT_TIMEOUT)
        self.background = inspect.isgeneratorfunction(fn)
        doc = inspect.getdoc(fn) or ""
        self.doc = doc.splitlines()[0] if doc else ""
        self.items = sorted(
            {int(m) for m in re.findall(r"\bitems? (\d+)", self.name.replace("_", " ") + " " + doc)}
        )


def discover():
    groups = {}
    for fname in sorted(os.listdir(TESTS_DIR)):
        m = re.fullmatch(r"test_(\w+)\.py", fname)
        if not m:
            continue
        group = m.group(1)
        spec = importlib.util.spec_from_file_location(f"pmxcfs_it_{group}", os.path.join(TESTS_DIR, fname))
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        fns = [
            f
            for n, f in vars(mod).items()
            if n.startswith("test_") and inspect.isfunction(f) and f.__module__ == mod.__name__
        ]
        fns.sort(key=lambda f: f.__code__.co_firstlineno)
        groups[group] = [TestCase(group, f) for f in fns]
    order = [g for g in GROUP_ORDER if g in groups] + sorted(g for g in groups if g not in GROUP_ORDER)
    return {g: groups[g] for g in order}


# --------------------------------------------------------------------------
# per-test context


class Context:
    """Passed to every test function as `t`."""

    def __init__(self, case, stack):
        self.case = case
        self.stack = stack
        self.details = []

    def daemon(self, *args, **kw):
        """Start a fresh daemon that lives until the end of the test."""
        return self.stack.enter_context(harness.Daemon(*args, **kw))

    def tmpdir(self):
        return self.stack.enter_context(harness.TempDir(keep=True))

    def note(self, msg):
        self.details.append(msg)


# --------------------------------------------------------------------------
# watchdog


class Watchdog:
    def __init__(self):
        self.fired = False
        self._ev = threading.Event()
        self._thread = None

    def start(self, seconds, owner):
        self.fired = False
        self._ev.clear()
        self._thread = threading.Thread(target=self._run, args=(seconds, owner), daemon=True)
        self._thread.start()

    def _run(self, seconds, owner):
        if self._ev.wait(seconds):
            return
        self.fired = True
        # unblock the main thread: kill the test's daemons (FUSE calls then
        # fail with ENOTCONN), abort their connections, then interrupt Python
        for pw in harness.procs_of(owner):
            try:
                os.kill(pw.pid, signal.SIGKILL)
            except OSError:
                pass
        for mp in harness.mounts_of(owner):
            harness.abort_fuse_connections_of(mp)
        os.kill(os.getpid(), signal.SIGUSR1)

    def stop(self):
        self._ev.set()
        if self._thread:
            self._thread.join(5)


def _sigusr1(signum, frame):
    if WATCHDOG.fired:
        WATCHDOG.fired = False
        raise TestTimeout()


WATCHDOG = Watchdog()


def _sigterm(signum, frame):
    raise RunnerInterrupted(signal.Signals(signum).name)


# --------------------------------------------------------------------------
# execution


class Result:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.failures = []


def one_line(s):
    s = " | ".join(l.strip() for l in str(s).splitlines() if l.strip())
    return s or "(no message)"


def describe_exception(e):
    if isinstance(e, TestFailure):
        return one_line(e)
    if isinstance(e, OSError) and e.errno in (errno.ENOTCONN, errno.ECONNABORTED):
        prefix = "FUSE connection lost (daemon crashed?): "
    else:
        prefix = ""
    tb = traceback.extract_tb(e.__traceback__)
    where = ""
    for fr in reversed(tb):
        if "/tests/" in fr.filename or "/lib/" in fr.filename:
            where = f" at {os.path.basename(fr.filename)}:{fr.lineno}"
            break
    return one_line(f"{prefix}unexpected {type(e).__name__}: {e}{where}")


def cleanup_owner(owner):
    """Kill/unmount whatever the test left behind. Returns a list of leftovers."""
    left = []
    for pw in harness.procs_of(owner):
        if pw.poll() is None:
            left.append(f"process {pw.pid} still running")
            harness.kill_proc(pw, 3.0)
    for mp in harness.mounts_of(owner):
        if mp in [m for m, _ in harness.mount_table()]:
            left.append(f"{mp} still mounted")
            harness.force_unmount(mp)
        harness.forget_mount(mp)
    return left


def crash_note():
    """' (daemon killed by SIGSEGV)' if a daemon of the test died of a signal we did not send."""
    notes = []
    for d in harness._current_daemons:
        pw = d.proc
        rc = pw.returncode if pw is not None else None
        if rc is not None and rc < 0 and rc not in (-signal.SIGKILL, -999) and not getattr(d, "_signalled", False):
            try:
                notes.append(f"daemon killed by {signal.Signals(-rc).name}")
            except ValueError:
                notes.append(f"daemon exit status {rc}")
    return f" ({'; '.join(notes)})" if notes else ""


def report(case, res, err, details, verbose):
    if err is None:
        res.passed += 1
        print(f"ok   {case.full}", flush=True)
    else:
        res.failed += 1
        res.failures.append(case.full)
        print(f"FAIL {case.full}: {err}", flush=True)
        if verbose:
            for d in details:
                for line in str(d).splitlines():
                    print(f"    | {line}", flush=True)


def _diag(ctx, exc):
    out = list(ctx.details) if ctx else []
    if exc is not None and not isinstance(exc, TestFailure):
        out.append("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    for d in harness.take_current_daemons():
        out.append(f"daemon {d.ipc_name} stderr (last lines):")
        txt = d.stderr_text().splitlines()[-15:]
        out += ["  " + l for l in txt] or ["  (empty)"]
    return out


def run_plain(case, verbose, res):
    harness.current_owner = case.full
    harness.take_current_daemons()
    err, exc, ctx = None, None, None
    WATCHDOG.start(case.timeout, case.full)
    try:
        with contextlib.ExitStack() as stack:
            ctx = Context(case, stack)
            case.fn(ctx)
    except TestTimeout:
        err = f"timed out after {case.timeout}s (daemon killed)"
    except (KeyboardInterrupt, RunnerInterrupted):
        WATCHDOG.stop()
        cleanup_owner(case.full)
        report(case, res, "interrupted", [], verbose)
        raise
    except Exception as e:  # noqa: BLE001
        err, exc = describe_exception(e), e
    finally:
        WATCHDOG.stop()
    left = cleanup_owner(case.full)
    if err is None and left:
        err = "left behind: " + "; ".join(left)
    if err is not None:
        err += crash_note()
    report(case, res, err, _diag(ctx, exc) if err else [], verbose)


class Background:
    """A generator test: the part before its `yield` runs before every other
    test, the rest after all other tests. It yields the number of seconds that
    must pass (counted from the yield) before it resumes."""

    def __init__(self, case):
        self.case = case
        self.stack = contextlib.ExitStack()
        self.ctx = Context(case, self.stack)
        self.gen = None
        self.resume_at = None
        self.done = False
        self.err = None
        self.exc = None

    def phase1(self):
        harness.current_owner = self.case.full
        WATCHDOG.start(DEFAULT_TIMEOUT, self.case.full)
        try:
            self.gen = self.case.fn(self.ctx)
            wait = next(self.gen)
            self.resume_at = time.monotonic() + float(wait)
        except StopIteration:
            self.done = True
        except TestTimeout:
            self.err = f"timed out in its first phase after {DEFAULT_TIMEOUT}s"
        except Exception as e:  # noqa: BLE001
            self.err, self.exc = describe_exception(e), e
        finally:
            WATCHDOG.stop()
        if self.err or self.done:
            self.close()

    def phase2(self):
        if self.err or self.done:
            return
        remaining = self.resume_at - time.monotonic()
        if remaining > 0:
            print(f"# {self.case.full}: waiting {remaining:.0f}s more", flush=True)
            time.sleep(remaining)
        harness.current_owner = self.case.full
        WATCHDOG.start(self.case.timeout, self.case.full)
        try:
            self.gen.send(None)
            self.err = "test generator yielded twice"
        except StopIteration:
            pass
        except TestTimeout:
            self.err = f"timed out after {self.case.timeout}s (daemon killed)"
        except Exception as e:  # noqa: BLE001
            self.err, self.exc = describe_exception(e), e
        finally:
            WATCHDOG.stop()
        self.close()

    def close(self):
        harness.current_owner = self.case.full
        try:
            if self.gen is not None:
                self.gen.close()
        except Exception as e:  # noqa: BLE001
            if not self.err:
                self.err, self.exc = describe_exception(e), e
        try:
            self.stack.close()
        except Exception as e:  # noqa: BLE001
            if not self.err:
                self.err, self.exc = describe_exception(e), e
        left = cleanup_owner(self.case.full)
        if not self.err and left:
            self.err = "left behind: " + "; ".join(left)

    def finish(self, res, verbose):
        report(self.case, res, self.err, _diag(self.ctx, self.exc) if self.err else [], verbose)


# --------------------------------------------------------------------------
# build


def build(repo_root):
    print("# cargo build -p pmxcfs", flush=True)
    t0 = time.monotonic()
    try:
        p = subprocess.run(
            ["cargo", "build", "-p", "pmxcfs"],
            cwd=repo_root,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    except FileNotFoundError:
        return "cargo not found in PATH"
    if p.returncode != 0:
        tail = p.stdout.decode(errors="replace").splitlines()[-30:]
        for line in tail:
            print(f"#   {line}", flush=True)
        return f"cargo build -p pmxcfs failed (exit {p.returncode}); see the build output above"
    print(f"# build ok ({time.monotonic() - t0:.0f}s)", flush=True)
    return None


def default_binary(repo_root):
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(repo_root, "target")
    if not os.path.isabs(target):
        target = os.path.join(repo_root, target)
    return os.path.join(target, "debug", "pmxcfs")


# --------------------------------------------------------------------------
# main


def main(argv=None):
    ap = argparse.ArgumentParser(
        prog="integration-tests/test",
        description="pmxcfs integration tests (run as root; real FUSE mounts)",
    )
    ap.add_argument("--list", action="store_true", help="list groups and tests, run nothing")
    b = ap.add_mutually_exclusive_group()
    b.add_argument("--build", dest="build", action="store_true", default=True,
                   help="run `cargo build -p pmxcfs` first (default)")
    b.add_argument("--no-build", dest="build", action="store_false", help="do not build")
    ap.add_argument("-v", "--verbose", action="store_true", help="print daemon stderr and tracebacks on failure")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dirs of failed tests")
    ap.add_argument("groups", nargs="*", metavar="GROUP", help="group or group.test to run (default: all)")
    args = ap.parse_args(argv)

    groups = discover()

    if args.list:
        for g, cases in groups.items():
            print(g)
            for c in cases:
                extra = f"  [item {', '.join(map(str, c.items))}]" if c.items else ""
                bg = "  (background)" if c.background else ""
                print(f"  {c.full}{extra}{bg}  -- {c.doc}" if c.doc else f"  {c.full}{extra}{bg}")
        return 0

    selected = []
    for sel in args.groups or list(groups):
        if sel in groups:
            selected += [c for c in groups[sel] if c not in selected]
        elif "." in sel and sel.split(".", 1)[0] in groups:
            hit = [c for c in groups[sel.split(".", 1)[0]] if c.full == sel]
            if not hit:
                print(f"unknown test: {sel}", file=sys.stderr)
                return 2
            selected += [c for c in hit if c not in selected]
        else:
            print(f"unknown group: {sel} (groups: {', '.join(groups)})", file=sys.stderr)
            return 2

    harness.KEEP_TMP = args.keep_tmp
    harness.set_child_subreaper()
    repo_root = os.path.dirname(HERE)
    env_bin = os.environ.get("PMXCFS_BIN")
    harness.Config.binary = os.path.abspath(env_bin) if env_bin else default_binary(repo_root)

    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGHUP, _sigterm)
    signal.signal(signal.SIGUSR1, _sigusr1)

    res = Result()
    interrupted = None
    backgrounds = []
    try:
        if args.build:
            err = build(repo_root)
            if err and not env_bin:
                harness.Config.build_error = err
        print(f"# binary: {harness.Config.binary}", flush=True)
        # background tests start first, finish last
        for c in selected:
            if c.background:
                bg = Background(c)
                backgrounds.append(bg)
                bg.phase1()
        for c in selected:
            if not c.background:
                run_plain(c, args.verbose, res)
        for bg in list(backgrounds):
            bg.phase2()
            backgrounds.remove(bg)
            bg.finish(res, args.verbose)
    except (KeyboardInterrupt, RunnerInterrupted) as e:
        interrupted = e
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for bg in backgrounds:
            try:
                bg.err = bg.err or "interrupted"
                bg.close()
                bg.finish(res, args.verbose)
            except BaseException:  # noqa: BLE001
                pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        problems = harness.cleanup_all()
        for p in problems:
            print(f"# cleanup problem: {p}", flush=True)
        if interrupted is not None:
            print(f"# interrupted ({type(interrupted).__name__} {interrupted})", flush=True)
        print(f"{res.passed} passed, {res.failed} failed", flush=True)
    if interrupted is not None:
        return 130
    return 0 if res.failed == 0 and res.passed > 0 else 1
