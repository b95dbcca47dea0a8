"""Test discovery and execution for integration-tests/test."""

import argparse
import contextlib
import errno
import importlib.util
import inspect
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback

from lib import harness
from lib.harness import NotRunnableOnC, RunnerInterrupted, TestFailure, TestTimeout

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS_DIR = os.path.join(HERE, "tests")
GROUP_ORDER = ["core", "fuse", "locks", "plugins", "memdb", "ipc", "status", "logger", "rrd"]
DEFAULT_TIMEOUT = 60
C_DIFFERENCES = os.path.join(HERE, "c-differences.txt")
NS_ENV = "PMXCFS_IT_OUTER_MNT_NS"  # set by the outer runner for the one in the namespaces
BUILD_ERROR_ENV = "PMXCFS_IT_BUILD_ERROR"


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
        self.not_run = 0
        self.failures = []


class CResult:
    """The C daemon's side of a --c-binary run."""

    def __init__(self, expected):
        self.expected = expected  # test -> entry of c-differences.txt
        self.same = []
        self.expected_diff = []
        self.unexpected = []
        self.not_run = []
        self.listed_but_same = []


class Outcome:
    """One test against one daemon: err None = passed; not_run = reason it
    could not run against the C daemon."""

    def __init__(self, err=None, details=(), not_run=None):
        self.err = err
        self.details = list(details)
        self.not_run = not_run


def owner_of(case, mode):
    return case.full if mode == "ours" else f"{case.full} [C]"


@contextlib.contextmanager
def daemon_mode(mode, isolate_net=False):
    """New daemons are ours or the C daemon (harness.Config.mode)."""
    harness.Config.mode, harness.Config.isolate_net = mode, isolate_net
    try:
        yield
    finally:
        harness.Config.mode, harness.Config.isolate_net = "ours", False


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


def report_pair(case, res, cres, ours, c, verbose):
    """--c-binary: one line for both daemons, `ours/C` (ok, FAIL, -- = not run)."""
    if ours.err is None:
        res.passed += 1
    else:
        res.failed += 1
        res.failures.append(case.full)
    parts = [] if ours.err is None else [ours.err]
    entry = cres.expected.get(case.full)
    if c is None or c.not_run is not None:
        ctag = "--"
        parts.append(f"not run against C: {c.not_run if c is not None else 'interrupted'}")
        cres.not_run.append(case.full)
    elif c.err is None:
        ctag = "ok"
        cres.same.append(case.full)
        if entry:
            cres.listed_but_same.append(case.full)
    else:
        ctag = "FAIL"
        if entry:
            parts.append(f"C: {c.err} (expected: {entry})")
            cres.expected_diff.append(case.full)
        else:
            parts.append(f"C: {c.err} (UNEXPECTED difference: not in {os.path.basename(C_DIFFERENCES)})")
            cres.unexpected.append(case.full)
    tag = f"{'ok' if ours.err is None else 'FAIL'}/{ctag}"
    print(f"{tag:<9} {case.full}" + (": " + "; ".join(parts) if parts else ""), flush=True)
    if verbose:
        for label, o in (("ours", ours), ("C", c)):
            if o is not None and o.err is not None:
                print(f"    | {label}:", flush=True)
                for d in o.details:
                    for line in str(d).splitlines():
                        print(f"    | {line}", flush=True)


def execute_plain(case, mode):
    """Run a plain test against one daemon. Returns (Outcome, the
    KeyboardInterrupt/RunnerInterrupted to re-raise or None)."""
    owner = owner_of(case, mode)
    harness.current_owner = owner
    harness.take_current_daemons()
    err, exc, ctx, not_run = None, None, None, None
    WATCHDOG.start(case.timeout, owner)
    try:
        with daemon_mode(mode), contextlib.ExitStack() as stack:
            ctx = Context(case, stack)
            case.fn(ctx)
    except TestTimeout:
        err = f"timed out after {case.timeout}s (daemon killed)"
    except NotRunnableOnC as e:
        not_run = str(e)
    except (KeyboardInterrupt, RunnerInterrupted) as e:
        WATCHDOG.stop()
        cleanup_owner(owner)
        return (Outcome("interrupted") if mode == "ours" else Outcome(not_run="interrupted")), e
    except Exception as e:  # noqa: BLE001
        err, exc = describe_exception(e), e
    finally:
        WATCHDOG.stop()
    left = cleanup_owner(owner)
    if mode == "ours":
        left += [f"IPC rings {d}" for d in harness.remove_shm_of(
            [d.ipc_name for d in harness._current_daemons if getattr(d, "ipc_name", None)])]
    if err is None and not_run is None and left:
        err = "left behind: " + "; ".join(left)
    if err is not None:
        err += crash_note()
    return Outcome(err, _diag(ctx, exc) if err else [], not_run), None


def run_plain(case, verbose, res, cres=None):
    ours, intr = execute_plain(case, "ours")
    if cres is None and ours.not_run is not None and ours.err is None:
        # a test that needs what this run lacks (e.g. the C daemon for a
        # mixed cluster): its own line, never counted as passed
        res.not_run += 1
        print(f"--   {case.full}: not run: {ours.not_run}", flush=True)
    elif cres is None:
        report(case, res, ours.err, ours.details, verbose)
    else:
        c = None
        if intr is None:
            c, intr = execute_plain(case, "c")
        report_pair(case, res, cres, ours, c, verbose)
    if intr is not None:
        raise intr


class Background:
    """A generator test: the part before its `yield` runs before every other
    test, the rest after all other tests. It yields the number of seconds that
    must pass (counted from the yield) before it resumes."""

    def __init__(self, case, mode="ours"):
        self.case = case
        self.mode = mode
        self.owner = owner_of(case, mode)
        self.not_run = None
        self.stack = contextlib.ExitStack()
        self.ctx = Context(case, self.stack)
        self.gen = None
        self.resume_at = None
        self.done = False
        self.err = None
        self.exc = None

    def _mode(self):
        # a C daemon of a background test lives while other tests run theirs:
        # it gets a network namespace of its own (IPC name @pve2 is fixed)
        return daemon_mode(self.mode, isolate_net=self.mode == "c")

    def phase1(self):
        harness.current_owner = self.owner
        WATCHDOG.start(DEFAULT_TIMEOUT, self.owner)
        try:
            with self._mode():
                self.gen = self.case.fn(self.ctx)
                wait = next(self.gen)
            self.resume_at = time.monotonic() + float(wait)
        except StopIteration:
            self.done = True
        except NotRunnableOnC as e:
            self.not_run = str(e)
        except TestTimeout:
            self.err = f"timed out in its first phase after {DEFAULT_TIMEOUT}s"
        except Exception as e:  # noqa: BLE001
            self.err, self.exc = describe_exception(e), e
        finally:
            WATCHDOG.stop()
        if self.err or self.done or self.not_run:
            self.close()

    def phase2(self):
        if self.err or self.done or self.not_run:
            return
        remaining = self.resume_at - time.monotonic()
        if remaining > 0:
            print(f"# {self.owner}: waiting {remaining:.0f}s more", flush=True)
            time.sleep(remaining)
        harness.current_owner = self.owner
        WATCHDOG.start(self.case.timeout, self.owner)
        try:
            with self._mode():
                self.gen.send(None)
            self.err = "test generator yielded twice"
        except StopIteration:
            pass
        except NotRunnableOnC as e:
            self.not_run = str(e)
        except TestTimeout:
            self.err = f"timed out after {self.case.timeout}s (daemon killed)"
        except Exception as e:  # noqa: BLE001
            self.err, self.exc = describe_exception(e), e
        finally:
            WATCHDOG.stop()
        self.close()

    def close(self):
        harness.current_owner = self.owner
        with self._mode():
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
        left = cleanup_owner(self.owner)
        if not self.err and not self.not_run and left:
            self.err = "left behind: " + "; ".join(left)

    def finish(self, res, verbose):
        report(self.case, res, self.err, _diag(self.ctx, self.exc) if self.err else [], verbose)

    def outcome(self):
        if self.not_run:
            return Outcome(not_run=self.not_run)
        return Outcome(self.err, _diag(self.ctx, self.exc) if self.err else [])


def finish_background(case, pair, res, cres, verbose):
    if cres is None:
        pair["ours"].finish(res, verbose)
    else:
        c = pair.get("c")
        report_pair(case, res, cres, pair["ours"].outcome(), c.outcome() if c else None, verbose)


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
# --c-binary: the C daemon beside ours


def load_differences(path, groups):
    """c-differences.txt: `group.test  reason; see where` per entry, `#`
    comments, indented lines continue the entry above. Returns (entries,
    problems)."""
    entries, problems, last = {}, [], None
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        return {}, [f"cannot read {path}: {e}"]
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():
            if last is None:
                problems.append(f"line {n}: continuation without an entry")
            else:
                entries[last] = (entries[last] + " " + line.strip()).strip()
            continue
        name, _, text = line.strip().partition(" ")
        if name in entries:
            problems.append(f"line {n}: {name} listed twice")
        entries[name], last = text.strip(), name
    known = {c.full for cases in groups.values() for c in cases}
    for name, text in entries.items():
        if name not in known:
            problems.append(f"{name}: no such test")
        if not text:
            problems.append(f"{name}: no reason given")
        elif "README" not in text and ".md" not in text:
            problems.append(f"{name}: does not say where the README explains it")
    return entries, problems


def inner_pid(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = f.read().split()
        return int(kids[0]) if kids else None
    except (OSError, ValueError):
        return None


def run_in_namespaces(args, argv, repo_root):
    """The outer runner: build, then run this runner again in private mount,
    network and PID namespaces (util-linux unshare), where it sets up what the
    C daemon needs (harness.setup_c_namespace). Whatever it mounts or starts
    there dies with the namespaces, also when it crashes."""
    cbin = os.path.abspath(args.c_binary)
    if os.geteuid() != 0:
        print("--c-binary needs root (namespaces and mounts)", file=sys.stderr)
        return 2
    if not (os.path.isfile(cbin) and os.access(cbin, os.X_OK)):
        print(f"--c-binary: not an executable file: {cbin}", file=sys.stderr)
        return 2
    unshare = shutil.which("unshare")
    if unshare is None:
        print("--c-binary needs unshare (util-linux)", file=sys.stderr)
        return 2
    env = dict(os.environ)
    env[NS_ENV] = os.readlink("/proc/self/ns/mnt")
    env.pop(BUILD_ERROR_ENV, None)
    if args.build:
        err = build(repo_root)
        if err and not os.environ.get("PMXCFS_BIN"):
            env[BUILD_ERROR_ENV] = err
    inner = [a for a in argv if a not in ("--build", "--no-build")] + ["--no-build"]
    cmd = [unshare, "--mount", "--net", "--pid", "--fork", "--kill-child=SIGTERM", "--mount-proc",
           "--propagation", "private", "--", sys.executable, os.path.join(HERE, "test")] + inner
    sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    p = subprocess.Popen(cmd, env=env)
    signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        while p.poll() is None:
            info = signal.sigtimedwait(sigs, 0.2)
            # a signal from a process (kill): pass it on to the runner inside;
            # one from the terminal (Ctrl-C, hangup) reached it already
            if info is not None and info.si_code <= 0:
                pid = inner_pid(p.pid)
                if pid:
                    try:
                        os.kill(pid, info.si_signo)
                    except OSError:
                        pass
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, sigs)
    rc = p.wait()
    return rc if rc >= 0 else 128 - rc


def c_summary(cres):
    differ = cres.expected_diff + cres.unexpected
    print(f"# tests that differ on the C daemon: {len(differ)} ({len(cres.expected_diff)} expected, "
          f"{len(cres.unexpected)} unexpected)", flush=True)
    if cres.unexpected:
        print(f"# unexpected differences: {', '.join(cres.unexpected)}", flush=True)
    if cres.listed_but_same:
        print(f"# listed in {os.path.basename(C_DIFFERENCES)} but passed on C: "
              f"{', '.join(cres.listed_but_same)}", flush=True)
    print(f"c-daemon: {len(cres.same)} same, {len(cres.expected_diff)} expected differences, "
          f"{len(cres.unexpected)} unexpected, {len(cres.not_run)} not run against C", flush=True)


# --------------------------------------------------------------------------
# main


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
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
    ap.add_argument("--c-binary", metavar="PATH",
                    help="also run every test against this C pmxcfs (built outside the repo); "
                         "expected differences: integration-tests/c-differences.txt")
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

    repo_root = os.path.dirname(HERE)
    if args.c_binary and NS_ENV not in os.environ:
        return run_in_namespaces(args, argv, repo_root)

    harness.KEEP_TMP = args.keep_tmp
    harness.set_child_subreaper()
    env_bin = os.environ.get("PMXCFS_BIN")
    harness.Config.binary = os.path.abspath(env_bin) if env_bin else default_binary(repo_root)

    cres = None
    if args.c_binary:
        try:
            harness.setup_c_namespace(os.environ[NS_ENV])
        except Exception as e:  # noqa: BLE001
            print(f"cannot prepare the namespaces for the C daemon: {e}", file=sys.stderr)
            return 2
        harness.Config.c_binary = os.path.abspath(args.c_binary)
        harness.Config.build_error = os.environ.get(BUILD_ERROR_ENV) or None
        expected, problems = load_differences(C_DIFFERENCES, groups)
        cres = CResult(expected)

    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGHUP, _sigterm)
    signal.signal(signal.SIGUSR1, _sigusr1)

    res = Result()
    interrupted = None
    backgrounds = []
    modes = ["ours"] if cres is None else ["ours", "c"]
    try:
        if args.build:
            err = build(repo_root)
            if err and not env_bin:
                harness.Config.build_error = err
        print(f"# binary: {harness.Config.binary}", flush=True)
        if cres is not None:
            print(f"# C binary: {harness.Config.c_binary} (each test runs against ours, then C; "
                  f"result `ours/C`)", flush=True)
            for p in problems:
                print(f"# {os.path.basename(C_DIFFERENCES)}: {p}", flush=True)
        # background tests start first, finish last
        for c in selected:
            if c.background:
                pair = {}
                backgrounds.append((c, pair))
                for m in modes:
                    pair[m] = Background(c, m)
                    pair[m].phase1()
        for c in selected:
            if not c.background:
                run_plain(c, args.verbose, res, cres)
        for c, pair in list(backgrounds):
            for m in modes:
                pair[m].phase2()
            backgrounds.remove((c, pair))
            finish_background(c, pair, res, cres, args.verbose)
    except (KeyboardInterrupt, RunnerInterrupted) as e:
        interrupted = e
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for c, pair in backgrounds:
            try:
                for bg in pair.values():
                    if bg.mode == "ours" or bg.err:
                        bg.err = bg.err or "interrupted"
                    else:
                        bg.not_run = bg.not_run or "interrupted"
                    bg.close()
                if "ours" in pair:
                    finish_background(c, pair, res, cres, args.verbose)
            except BaseException:  # noqa: BLE001
                pass
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        problems_left = harness.cleanup_all()
        for p in problems_left:
            print(f"# cleanup problem: {p}", flush=True)
        if interrupted is not None:
            print(f"# interrupted ({type(interrupted).__name__} {interrupted})", flush=True)
        if cres is not None:
            c_summary(cres)
        skipped = f", {res.not_run} skipped" if res.not_run else ""
        print(f"{res.passed} passed, {res.failed} failed{skipped}", flush=True)
    if interrupted is not None:
        return 130
    if cres is not None and cres.unexpected:
        return 1
    return 0 if res.failed == 0 and res.passed > 0 else 1
