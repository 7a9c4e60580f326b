"""Stage timing and progress messages of a build: what the user sees while it runs."""

from __future__ import annotations

import time
from typing import Any, Callable

Progress = Callable[[str], None]


class StepMessage(str):
    """A progress message from inside an iterative stage: a display may overwrite it with the next one."""


class StageClock:
    """Runs the stages of a build, tells `progress` what each does, and adds up their seconds."""

    def __init__(self, progress: Progress):
        self.seconds: dict[str, float] = {}
        self.progress = progress
        self.started = time.perf_counter()

    def run(self, name: str, what: str, fn: Callable[[], Any]) -> Any:
        self.progress(what)
        start = time.perf_counter()
        result = fn()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)
        return result

    def total(self) -> dict[str, float]:
        return {**self.seconds, "total": round(time.perf_counter() - self.started, 3)}


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
