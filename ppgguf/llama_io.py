"""Small helpers around llama-cpp-python: quiet loading, logits of a token sequence."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import numpy as np


class _Captured:
    def __init__(self):
        self.text = ""

    def last_line(self) -> str:
        lines = [line for line in self.text.splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""


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


def open_gguf(path: Path, n_ctx: int = 2048, logits_all: bool = False, threads: int | None = None, seed: int = 0):
    """Load a GGUF with llama-cpp-python on the CPU; a file that does not load raises ValueError."""
    import llama_cpp

    with captured_stderr() as log:
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
            raise ValueError(f"{err}: {log.last_line()}") from None


def gguf_logits(llm, ids: list[int]) -> np.ndarray:
    """Next-token logits at every position of `ids` (needs logits_all=True)."""
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)
