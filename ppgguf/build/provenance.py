"""Provenance of a build: the versions that ran it and the hashes of everything it read."""

from __future__ import annotations

import ctypes
import hashlib
import json
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from .. import __version__
from ..inputs.base import sha256_of
from ..recipe import Recipe, recipe_path


def input_hashes(character: Path, recipe_name: str | None, recipe: Recipe, system_prompt: str,
                 base_sha256: str) -> dict[str, str | None]:
    """sha256 of everything a build reads: base weights, character file, recipe file and resolved recipe."""
    recipe_file = recipe_path(recipe_name or "default")
    resolved = json.dumps(recipe.to_json(), sort_keys=True).encode()
    return {
        "base_sha256": base_sha256,
        "character_sha256": sha256_of([Path(character)]),
        "system_prompt_sha256": hashlib.sha256(system_prompt.encode("utf-8")).hexdigest(),
        "recipe_file": str(recipe_file),
        "recipe_file_sha256": sha256_of([recipe_file]),
        "recipe_sha256": hashlib.sha256(resolved).hexdigest(),  # after command-line overrides
    }


def versions() -> dict[str, str]:
    import llama_cpp
    import transformers

    return {
        "ppgguf": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "gguf": _package_version("gguf"),
        "llama_cpp_python": llama_cpp.__version__,
        **_llama_cpp_build(),
    }


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def _llama_cpp_build() -> dict[str, str]:
    """llama.cpp's and ggml's own versions and ggml's commit, read from the loaded libraries."""
    import llama_cpp

    info = {}
    try:
        info["llama_cpp"] = llama_cpp.llama_version().decode()
    except Exception:  # an older binding without llama_version()
        info["llama_cpp"] = "unknown"
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    for lib_name in ("libggml-base.so", "libggml-base.dylib", "ggml-base.dll", "libggml.so", "libggml.dylib"):
        if not (lib_dir / lib_name).is_file():
            continue
        try:
            lib = ctypes.CDLL(str(lib_dir / lib_name))
            for key, symbol in (("ggml", "ggml_version"), ("ggml_commit", "ggml_commit")):
                fn = getattr(lib, symbol)
                fn.restype = ctypes.c_char_p
                info[key] = fn().decode()
        except (OSError, AttributeError):
            continue
        break
    info.setdefault("ggml", "unknown")
    info.setdefault("ggml_commit", "unknown")
    return info
