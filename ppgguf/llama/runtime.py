"""Small helpers around llama-cpp-python: quiet loading, logits of a token sequence."""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
from pathlib import Path

import numpy as np


class _Captured:
    """Text written during a `captured_stderr` (set when the block ends) or `llama_log` block."""

    def __init__(self):
        self.text = ""

    def last_line(self) -> str:
        lines = [line for line in self.text.splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""

    def reason(self) -> str:
        """The last line that reports an error ("error loading model: ..."), else the last line."""
        errors = [line.strip() for line in self.text.splitlines() if "error" in line.lower()]
        return errors[-1] if errors else self.last_line()


@contextlib.contextmanager
def captured_stderr():
    """Capture what C code writes to file descriptor 2 (llama.cpp logs there)."""
    captured = _Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", errors="replace")


@contextlib.contextmanager
def llama_log():
    """Collect what llama.cpp logs, through its log callback.

    While a model loads, llama-cpp-python points file descriptor 2 at /dev/null (verbose=False), so
    `captured_stderr` never sees why a load failed; the callback does.
    """
    import llama_cpp
    from llama_cpp import _logger

    log = _Captured()

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        log.text += text.decode("utf-8", errors="replace")

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield log
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def open_gguf(path: Path, n_ctx: int = 2048, logits_all: bool = False, threads: int | None = None, seed: int = 0):
    """Load a GGUF with llama-cpp-python on the CPU; a file that does not load raises ValueError
    with llama.cpp's reason."""
    import llama_cpp

    with captured_stderr(), llama_log() as log:
        try:
            return llama_cpp.Llama(
                str(path),
                n_ctx=n_ctx,
                n_batch=min(n_ctx, 512),
                logits_all=logits_all,
                n_threads=threads or os.cpu_count(),
                n_gpu_layers=0,
                seed=seed,
                verbose=False,
            )
        except ValueError as err:
            failure = err
    raise ValueError(log.reason() or str(failure))


def gguf_logits(llm, ids: list[int]) -> np.ndarray:
    """Next-token logits at every position of `ids` (needs logits_all=True)."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)
