"""The on-CPU time of a process, summed over its threads, over a span
(integration-tests/bench, integration-tests/bench-ipc)."""

import contextlib
import os
import threading


def thread_cpu_ns(pid):
    """{thread id: on-CPU ns} from /proc/PID/task/*/schedstat (first field)."""
    res = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    res[tid] = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return res


class CpuMeter:
    """The daemon's on-CPU time over a span, summed over its threads
    (schedstat, ns). A thread may end inside the span (the C daemon's FUSE
    loop starts and ends workers as load changes): a sampler thread reads
    every thread's counter every SAMPLE s and keeps the last value seen, so
    an ended thread loses at most its time since the last sample."""

    SAMPLE = 0.02

    def __init__(self, pid):
        self.pid = pid
        self.base = {}
        self.last = {}
        self._stop = threading.Event()
        self._thread = None

    def _sample(self):
        now = thread_cpu_ns(self.pid)
        for tid, v in now.items():
            self.last[tid] = max(v, self.last.get(tid, 0))
        return now

    def _run(self):
        while not self._stop.wait(self.SAMPLE):
            self._sample()

    def __enter__(self):
        self.base = thread_cpu_ns(self.pid)
        self.last = dict(self.base)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        now = self._sample()
        self.ended = len(set(self.last) - set(now))
        self.ns = sum(v - self.base.get(tid, 0) for tid, v in self.last.items())
        return False
