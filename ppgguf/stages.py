"""Stage timing and progress messages of a build (what the user sees while it runs), and the
process's resident memory: what each stage peaks at, and handing freed memory back between stages."""

from __future__ import annotations

import ctypes
import threading
import time
from typing import Any, Callable

Progress = Callable[[str], None]


class StepMessage(str):
    """A progress message from inside an iterative stage: a display may overwrite it with the next one."""


class StageClock:
    """Runs the stages of a build, tells `progress` what each does, adds up their seconds and
    measures each stage's peak resident memory."""

    def __init__(self, progress: Progress):
        self.seconds: dict[str, float] = {}
        self.peak_rss: dict[str, int] = {}
        self.progress = progress
        self.started = time.perf_counter()

    def run(self, name: str, what: str, fn: Callable[[], Any]) -> Any:
        self.progress(what)
        start = time.perf_counter()
        with _StagePeak() as peak:
            result = fn()
        release_freed_memory()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)
        self.peak_rss[name] = max(self.peak_rss.get(name, 0), peak.bytes)
        return result

    def total(self) -> dict[str, float]:
        return {**self.seconds, "total": round(time.perf_counter() - self.started, 3)}

    def memory(self) -> dict[str, int]:
        """Peak resident bytes of each stage, and of the whole process so far (`total`: what
        `/usr/bin/time -v` reports)."""
        return {**self.peak_rss, "total": peak_rss_bytes()}


class _StagePeak:
    """The peak resident memory while a stage runs.

    Exact when the stage sets a new peak for the process (the kernel's counter rises); otherwise the
    highest of the resident sizes sampled every 20 ms. The kernel's counter is never reset, so
    `/usr/bin/time` still sees the whole build's peak.
    """

    def __init__(self):
        self.bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "_StagePeak":
        self._before = peak_rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        after = peak_rss_bytes()
        self.bytes = after if after > self._before else max(self.bytes, current_rss_bytes())

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.bytes = max(self.bytes, current_rss_bytes())


def step_reporter(what: str, progress: Progress) -> Callable[[int, int, float], None]:
    """Progress of an iterative stage, with the time left estimated from the steps so far.

    The clock starts at the first step's report, not when the reporter is made: the work a stage
    does before its first step (calibration, the dense pass of mask learning) is not a step, and
    counting it made the first estimates far too long.
    """
    first: list[tuple[int, float]] = []

    def report(step: int, steps: int, loss: float) -> None:
        now = time.perf_counter()
        if not first:
            first.append((step, now))
        first_step, first_time = first[0]
        if step > first_step:
            left = (now - first_time) / (step - first_step) * (steps - step)
            eta = f"about {left / 60:.1f} min left"
        else:
            eta = "estimating the time left"
        progress(StepMessage(f"{what}: step {step}/{steps}, loss {loss:.4f}, {eta}"))

    return report


# --------------------------------------------------------------------------------------------
# Resident memory of this process


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_rss_bytes() -> int:
    kib = _proc_status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss_bytes() -> int:
    kib = _proc_status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def release_freed_memory() -> None:
    """Hand memory freed by a finished stage back to the system (glibc keeps freed heap memory otherwise,
    and the next stage's peak stacks on top of it); a no-op where there is no glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
