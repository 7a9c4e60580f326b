"""Run directories: every stage's artifact, keyed by the inputs that produced it.

A rerun with the same inputs finds the finished stages and skips them; a crash loses at most the
stage in flight, because every artifact is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    return Path(os.environ.get("PPGGUF_HOME", Path.home() / ".cache" / "ppgguf"))


def key_of(inputs: Any) -> str:
    """A short stable hash of JSON-serialisable inputs."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def run_dir(inputs: Any) -> Path:
    path = cache_root() / "runs" / key_of(inputs)
    path.mkdir(parents=True, exist_ok=True)
    return path


def base_dir(base: str | None) -> Path:
    """Where what depends on the base model alone goes (a checkpoint directory's vocab-only GGUF)."""
    path = cache_root() / "bases" / key_of({"base": base})
    path.mkdir(parents=True, exist_ok=True)
    return path


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
