"""The build's output files: checks before any work, and placing them all at once when every one is ready.

Everything a build writes (the GGUF, its report, figure, Ollama Modelfile and model card) is written
and checked in the run directory first; `place_files` then moves them beside each other, the GGUF
last, so a GGUF at the output path always has its companions.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import UserError


def output_path(character: Path, out: Path | None) -> Path:
    """The GGUF to write: `out`, or the character file with a .gguf suffix; checked to be writable."""
    path = Path(out) if out else Path(character).with_suffix(".gguf")
    if path.suffix.lower() != ".gguf":
        raise UserError(f"output '{path}' must end in .gguf")
    check_output(path)
    return path


def companion_paths(out: Path) -> dict[str, Path]:
    """Where each companion of the GGUF `out` goes, by kind."""
    return {
        "report": out.with_name(out.name + ".report.json"),
        "figure": out.with_name(out.name + ".png"),
        "modelfile": out.with_name(out.stem + ".Modelfile"),
        "card": out.with_name(out.stem + ".md"),
        "imatrix": out.with_name(out.stem + ".imatrix.gguf"),
    }


def check_output(out: Path, expected_bytes: int = 0) -> None:
    directory = out.parent if str(out.parent) else Path(".")
    if not directory.is_dir():
        if any(p.exists() and not p.is_dir() for p in (directory, *directory.parents)):
            raise UserError(
                f"output directory '{directory}' is not a directory (a file is in the way); choose another --out"
            )
        raise UserError(f"output directory '{directory}' does not exist; create it or choose another --out")
    if out.is_dir():
        raise UserError(f"output '{out}' is a directory; give a file name ending in .gguf")
    # os.access says yes to root whatever the permissions (and lies on some network file systems):
    # creating a file is the only test that tells.
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".write-test", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UserError(f"output directory '{directory}' is not writable ({err.strerror}); choose another --out") from None
    free = shutil.disk_usage(directory).free
    if expected_bytes and free < expected_bytes:
        raise UserError(
            f"not enough free disk in '{directory}': {human_bytes(free)} free, about "
            f"{human_bytes(expected_bytes)} needed; free some space or choose another --out"
        )


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def place_files(moves: list[tuple[Path, Path]]) -> None:
    """Move each (ready file, destination) into place, in order; put the GGUF last.

    If a move fails, the destinations already placed by this call are removed again, so the
    output is all there or not changed at all (an earlier build's files of the same name are lost).
    """
    placed: list[Path] = []
    try:
        for src, dst in moves:
            place_file(src, dst)
            placed.append(dst)
    except BaseException:
        for dst in placed:
            dst.unlink(missing_ok=True)
        raise


def place_file(src: Path, dst: Path) -> None:
    """Move `src` to `dst` atomically: a rename, or across file systems a copy to a temporary name beside `dst`
    and a rename, so `dst` is never seen half-written."""
    try:
        os.replace(src, dst)
        return
    except OSError as err:
        if err.errno != errno.EXDEV:
            raise
    tmp = dst.with_name(f".{dst.name}.ppgguf-partial")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    src.unlink(missing_ok=True)
