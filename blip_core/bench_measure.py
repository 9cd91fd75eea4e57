"""What both benchmarks (``bench`` for BLIP, ``bench_blip2``) measure with: medians, a process's
peak resident memory, and a one-line description of the machine."""

from __future__ import annotations

import os
import platform
import statistics
from pathlib import Path


def median_ms(xs: list[float]) -> float:
    """The median of durations in seconds, in milliseconds."""
    return statistics.median(xs) * 1000


def vmhwm_mb() -> float:
    """This process's peak resident set (``VmHWM``) in MB; nan where /proc does not tell."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def machine() -> str:
    """The CPU's model name, its logical and physical CPUs and the architecture."""
    from blip_core.api import physical_cores

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs ({physical_cores()} physical), {platform.machine()}"


class AnonPeak:
    """The peak of this process's anonymous resident memory (``RssAnon``: heap, arenas, copies of
    weights), sampled every ``interval`` seconds on a daemon thread from creation until ``stop()``.
    ``VmHWM`` also counts file pages (memory-mapped weights and tables), which the kernel drops
    and reads again under pressure: anonymous memory is what must fit."""

    def __init__(self, interval: float = 0.05):
        import threading

        self.peak_mb = self._now()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, args=(interval,), daemon=True)
        self._thread.start()

    @staticmethod
    def _now() -> float:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def _sample(self, interval: float) -> None:
        while not self._done.wait(interval):
            self.peak_mb = max(self.peak_mb, self._now())

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self._now())
        return self.peak_mb
