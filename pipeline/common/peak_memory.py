"""Peak resident memory while a block runs: this process exactly, its child processes by sampling.

This process: the kernel's high-water mark (``VmHWM`` in /proc/self/status), reset when the block starts
by writing 5 to /proc/self/clear_refs (Linux), so each stage gets its own peak, not the run's. Child
processes (engines run in children): their summed RSS sampled every ``interval`` seconds, as is the
process tree's total (this process + children at the same instant). Where the reset is not possible
(no /proc, or a kernel or sandbox that accepts the write and keeps the old mark, which the check after the
write detects), this process's peak is the sampled one and ``exact`` is False.

Anonymous memory is sampled beside RSS (this process: ``RssAnon``; children: RSS less shared pages): RSS
also counts the pages of a mapped file (ONNX Runtime and DeepSparse map the weights file), which are page
cache the kernel takes back under pressure, so anonymous memory is what a run needs the machine to hold.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


#: after a reset the high-water mark is the resident size of that moment; more than this above it: no reset
RESET_SLACK = 32 * 2**20


def _status(field: str) -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _high_water_mark() -> int | None:
    return _status("VmHWM")


def _reset_high_water_mark() -> bool:
    """Reset the kernel's mark and check it took: some kernels and sandboxes accept the write and ignore it."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    mark, resident = _high_water_mark(), _status("VmRSS")
    return mark is not None and resident is not None and mark <= resident + RESET_SLACK


class PeakMemory:
    """``with PeakMemory() as peak: ...`` then ``peak.result()``: bytes at the peak, for the block alone."""

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.process = psutil.Process()
        self.self_peak = self.children_peak = self.total_peak = 0
        self.children_anon_peak = 0  # children's RSS less file-backed pages (a mapped weights file is page cache)
        self.self_anon_peak = self.anon_peak = 0  # this process's RssAnon; with the children's at the same instant
        self._stop = threading.Event()

    def _sample(self) -> None:
        try:
            own = self.process.memory_info().rss
            own_anon = _status("RssAnon") or 0
            children = anon = 0
            for child in self.process.children(recursive=True):
                try:
                    info = child.memory_info()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
                children, anon = children + info.rss, anon + info.rss - info.shared
        except psutil.Error:
            return
        self.self_peak = max(self.self_peak, own)
        self.children_peak = max(self.children_peak, children)
        self.children_anon_peak = max(self.children_anon_peak, anon)
        self.self_anon_peak = max(self.self_anon_peak, own_anon)
        self.anon_peak = max(self.anon_peak, own_anon + anon)
        self.total_peak = max(self.total_peak, own + children)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "PeakMemory":
        self.exact = _reset_high_water_mark()
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> bool:
        self._stop.set()
        self._thread.join()
        self._sample()
        if self.exact:
            self.self_peak = max(self.self_peak, _high_water_mark() or 0)
            self.total_peak = max(self.total_peak, self.self_peak)
        return False

    def result(self) -> dict:
        return {"peak_rss_bytes": self.total_peak, "peak_rss_self_bytes": self.self_peak,
                "peak_rss_children_bytes": self.children_peak, "self_exact": self.exact,
                "children_sampled_every_s": self.interval,
                "peak_anon_bytes": self.anon_peak, "peak_anon_self_bytes": self.self_anon_peak,
                "anon_sampled_every_s": self.interval}


def measured(block, *args, **kwargs) -> tuple[object, dict]:
    """(what ``block(*args, **kwargs)`` returns, {"seconds", peak RSS figures}) for one call."""
    t0 = time.time()
    with PeakMemory() as peak:
        value = block(*args, **kwargs)
    return value, {"seconds": round(time.time() - t0, 3), **peak.result()}
