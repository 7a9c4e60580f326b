"""Issue 6: builds that never lie and never lose work.

1. Bad inputs: through the CLI, each one exits non-zero with one `error:` line naming the problem, no
   traceback, and nothing written where the output would go.
2. Crash safety: a build killed (SIGKILL) in the middle of calibration or of export, or interrupted
   (SIGINT), leaves no output; a rerun reuses the finished stages and writes the same bytes as an
   uninterrupted build.
3. Determinism: the same inputs and seed give the same file; the report records what was used.
4. Persona text is data: braces, quotes, backslashes, newlines and non-ASCII survive unchanged.

Everything runs on the tiny random models of conftest.py.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import ppgguf.build.memory
import ppgguf.build.output
import ppgguf.build.pipeline
from ppgguf.build.pipeline import BuildOptions, build
from ppgguf.cli import app
from ppgguf.errors import UserError
from ppgguf.export.writer import export_gguf
from ppgguf.inputs.persona import load_persona

from tiny_models import tiny_recipe
from modelfile_parser import modelfile_fields

REPO = Path(__file__).resolve().parent.parent
CHARACTER = REPO / "examples" / "captain_mirela.txt"

# Fast: no calibration data at all.
MAGNITUDE_RECIPE = tiny_recipe("magnitude")

# The persona method with the smallest settings that still run both of its stages; the tiny model is
# its own teacher (exported to GGUF and run through llama.cpp).
PERSONA_RECIPE = tiny_recipe("persona")

WANDA_RECIPE = tiny_recipe("wanda-sp")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tiny_llama, tmp_path_factory) -> Path:
    """A real GGUF of the tiny llama model (F16), for the corrupt/truncated base cases."""
    path = tmp_path_factory.mktemp("tiny-gguf") / "tiny.gguf"
    export_gguf(tiny_llama.model, tiny_llama.base.family, tiny_llama.base.tokenizer_spec, path, "F16")
    return path


# --------------------------------------------------------------------------------------------
# 1. Bad inputs through the CLI


def _card_png_malformed(tmp: Path) -> Path:
    # a PNG signature, then a chunk whose length runs past the end of the file
    return write(tmp / "card.png", b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x10\x00tEXtchara\x00eyJu")


def _unsupported_arch(tmp: Path) -> Path:
    d = tmp / "gpt2-model"
    write(d / "config.json", json.dumps({"model_type": "gpt2", "n_embd": 64, "n_layer": 2}))
    write(d / "model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return d


def _pickle_dir(tmp: Path) -> Path:
    d = tmp / "pickle-model"
    write(d / "config.json", json.dumps({"model_type": "llama"}))
    write(d / "pytorch_model.bin", b"PK\x03\x04 not really a pickle")
    return d


# id -> (callable(tmp, ctx) -> {"character": ..., "base": ..., "recipe": ..., "out": ..., "args": [...]}, pattern)
# ctx gives the valid defaults: tiny model dir, tiny GGUF.
BAD_INPUTS = {
    "character-missing": (lambda t, c: {"character": t / "[draft] nobody.txt"}, r"\[draft\] nobody\.txt: .*not found"),
    "character-empty": (lambda t, c: {"character": write(t / "empty.txt", "")}, r"empty"),
    "character-binary": (lambda t, c: {"character": write(t / "bin.txt", bytes(range(256)) * 4)}, r"binary"),
    "character-not-utf8": (
        lambda t, c: {"character": write(t / "latin1.txt", "Name: Zoë\nZoë is a café owner who talks a lot.".encode("latin-1"))},
        r"UTF-8",
    ),
    "character-over-64KiB": (lambda t, c: {"character": write(t / "huge.txt", "Name: Big\n" + "word " * 14000)}, r"64 KiB"),
    "card-json-malformed": (lambda t, c: {"character": write(t / "card.json", '{"name": "Mara", "description": ')}, r"malformed JSON"),
    "card-png-malformed": (lambda t, c: {"character": _card_png_malformed(t)}, r"PNG"),
    "card-no-name": (
        lambda t, c: {"character": write(t / "card.json", json.dumps({"description": "A sailor who talks about the sea all day long."}))},
        r"name",
    ),
    "card-no-description": (lambda t, c: {"character": write(t / "card.json", json.dumps({"name": "Mara"}))}, r"description"),
    "base-missing": (lambda t, c: {"base": t / "no-such-model"}, r"not found"),
    "base-dir-not-a-model": (lambda t, c: {"base": (t / "empty-dir").mkdir() or t / "empty-dir"}, r"not a model"),
    "base-unsupported-arch": (lambda t, c: {"base": _unsupported_arch(t)}, r"gpt2.*not supported"),
    "base-gguf-corrupt": (lambda t, c: {"base": write(t / "random.gguf", os.urandom(4096))}, r"not a readable GGUF"),
    "base-gguf-truncated": (
        lambda t, c: {"base": write(t / "half.gguf", c["gguf"].read_bytes()[: c["gguf"].stat().st_size // 2])},
        r"truncated|incomplete",
    ),
    "base-pickle-dir": (lambda t, c: {"base": _pickle_dir(t)}, r"pickle"),
    "base-bin-file": (lambda t, c: {"base": write(t / "model.bin", b"\x80\x02}q\x00.")}, r"pickle"),
    "ffn-sparsity-1": (lambda t, c: {"args": ["--ffn-sparsity", "1.0"]}, r"\[0, 1\)"),
    "ffn-sparsity-negative": (lambda t, c: {"args": ["--ffn-sparsity", "-0.1"]}, r"\[0, 1\)"),
    "head-sparsity-1": (lambda t, c: {"args": ["--head-sparsity", "1"]}, r"\[0, 1\)"),
    "ffn-sparsity-under-32-channels": (lambda t, c: {"args": ["--ffn-sparsity", "0.9"]}, r"fewer than 32"),
    "head-sparsity-no-head": (lambda t, c: {"args": ["--head-sparsity", "0.8"]}, r"no attention head"),
    "quant-unknown": (lambda t, c: {"args": ["--quant", "Q3_XYZ"]}, r"unknown quant type 'Q3_XYZ'"),
    "embedding-quant-unknown": (lambda t, c: {"args": ["--embedding-quant", "Q9"]}, r"unknown embedding quant type 'Q9'"),
    "embedding-quant-too-wide-blocks": (lambda t, c: {"args": ["--embedding-quant", "Q4_K"]}, r"needs rows divisible by 256"),
    "method-unknown": (lambda t, c: {"args": ["--method", "oracle"]}, r"unknown method 'oracle'"),
    "recipe-unknown-name": (lambda t, c: {"recipe": "no-such-recipe"}, r"unknown recipe 'no-such-recipe'"),
    "recipe-malformed-toml": (lambda t, c: {"recipe": write(t / "bad.toml", "[prune\nmethod = ")}, r"not valid TOML"),
    "recipe-unknown-key": (
        lambda t, c: {"recipe": write(t / "typo.toml", "[prune]\nffn_sparsty = 0.5\n")},
        r"unknown key 'ffn_sparsty' in \[prune\]",  # not eaten as console markup
    ),
    "out-under-a-file": (lambda t, c: {"out": write(t / "somefile.txt", "x") / "out.gguf"}, r"not a directory"),
    "out-dir-missing": (lambda t, c: {"out": t / "no" / "such" / "dir" / "out.gguf"}, r"does not exist"),
    "out-is-a-directory": (lambda t, c: {"out": (t / "dir.gguf").mkdir() or t / "dir.gguf"}, r"is a directory"),
    "out-not-gguf": (lambda t, c: {"out": t / "out" / "npc.bin"}, r"must end in \.gguf"),
}


def _invoke(args: list[str]):
    return CliRunner().invoke(app, [str(a) for a in args])


def _assert_one_line_error(result, pattern: str) -> str:
    assert result.exit_code not in (0, None), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    err = result.stderr
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    assert re.search(pattern, errors[0], re.IGNORECASE), errors[0]
    return errors[0]


def _nothing_written(out_dir: Path) -> None:
    if out_dir.is_dir():
        assert sorted(p.name for p in out_dir.iterdir()) == [], "a failed build left files behind"


def _assert_magnitude_build_refused(tmp_path: Path, base: Path, pattern: str, *options) -> None:
    """A fast (magnitude) build of CHARACTER into an empty directory fails with one `error:` line
    matching `pattern` and leaves that directory empty."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    recipe = write(tmp_path / "magnitude.toml", MAGNITUDE_RECIPE)
    args = ["build", CHARACTER, "--out", out_dir / "npc.gguf", "--base", base, "--recipe", recipe, *options,
            "--device", "cpu"]
    _assert_one_line_error(_invoke(args), pattern)
    _nothing_written(out_dir)


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_line_error(case, tiny_llama, tiny_gguf, tmp_path):
    make, pattern = BAD_INPUTS[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    spec = {
        "character": CHARACTER,
        "base": tiny_llama.dir,
        "recipe": write(tmp_path / "magnitude.toml", MAGNITUDE_RECIPE),
        "out": out_dir / "npc.gguf",
        "args": [],
        **make(inputs, {"gguf": tiny_gguf}),
    }
    args = ["build", spec["character"], "--out", spec["out"], "--base", spec["base"], "--recipe", spec["recipe"],
            "--device", "cpu", *spec["args"]]
    _assert_one_line_error(_invoke(args), pattern)
    _nothing_written(out_dir)
    assert not Path(spec["out"]).is_file()
    assert not any("partial" in p.name for p in inputs.rglob("*"))


def test_output_dir_not_writable(tiny_llama, tmp_path, monkeypatch):
    """A read-only directory; as root, chmod does not stop writes, so the probe is what is tested."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real_mkstemp = ppgguf.build.output.tempfile.mkstemp

    def refuse(*args, dir=None, **kwargs):  # what a read-only directory answers a non-root user
        if dir is not None and Path(dir) == locked:
            raise PermissionError(13, "Permission denied", str(dir))
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(ppgguf.build.output.tempfile, "mkstemp", refuse)
    args = ["build", CHARACTER, "--out", locked / "npc.gguf", "--base", tiny_llama.dir, "--device", "cpu"]
    _assert_one_line_error(_invoke(args), r"not writable")
    _nothing_written(locked)


def test_not_enough_disk(tiny_llama, tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(ppgguf.build.output.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 4096, 4096))
    _assert_magnitude_build_refused(tmp_path, tiny_llama.dir,
                                    r"not enough free disk.*4\.0 KiB free, about \d+\.\d KiB needed")


def test_not_enough_memory(tiny_llama, tmp_path, monkeypatch):
    """Refused before the base model is loaded, with the predicted need and what is available."""
    monkeypatch.setattr(ppgguf.build.memory, "available_bytes", lambda: 2**20)
    monkeypatch.setattr(ppgguf.build.memory, "current_rss_bytes", lambda: 0)
    monkeypatch.setattr(ppgguf.build.pipeline, "load_base", lambda *a: pytest.fail("the base model was loaded"))
    _assert_magnitude_build_refused(
        tmp_path, tiny_llama.dir, r"needs about \d+\.\d GiB of memory \(its \w+ stage\) and this machine has 0\.0 GiB")


def test_per_layer_widths_refused_for_qwen3_before_any_work(tiny_qwen3, tmp_path, monkeypatch):
    monkeypatch.setattr(ppgguf.build.pipeline, "calibration_data", lambda *a: pytest.fail("calibration started"))
    _assert_magnitude_build_refused(tmp_path, tiny_qwen3.dir, r"deci graph.*qwen3.*uniform widths", "--per-layer")


def test_device_cuda_without_gpu(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the same on a machine with a GPU
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = ["build", CHARACTER, "--out", out_dir / "npc.gguf", "--base", tiny_llama.dir, "--device", "cuda"]
    _assert_one_line_error(_invoke(args), r"CUDA")
    _nothing_written(out_dir)


def test_debug_shows_the_traceback(tmp_path):
    result = _invoke(["build", tmp_path / "nobody.txt", "--out", tmp_path / "npc.gguf", "--debug"])
    assert result.exit_code != 0
    assert isinstance(result.exception, UserError) and "not found" in str(result.exception)


def test_inspect_bad_files(tiny_gguf, tmp_path):
    for path, pattern in (
        (tmp_path / "missing.gguf", r"no such file"),
        (write(tmp_path / "random.gguf", os.urandom(2048)), r"not a readable GGUF"),
        (write(tmp_path / "half.gguf", tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 2]), r"truncated"),
    ):
        _assert_one_line_error(_invoke(["inspect", path]), pattern)


# --------------------------------------------------------------------------------------------
# 2. Crash safety: SIGKILL in the middle of calibration and of export, SIGINT during validation.
#
# The child is the real CLI, started by a small driver that holds the build at one point (test code
# only: it wraps a library function, prints a marker and sleeps) so the signal lands where it should
# however fast or slow the machine is.

DRIVER = r"""
import signal, sys, time
import gguf
import ppgguf.build.finish, ppgguf.calibration.answers

where = sys.argv[1]

def hold(label):
    print(f"@@ held at {label}", file=sys.stderr, flush=True)
    time.sleep(600)

if where == "calibrate":  # reference states and the teacher GGUF are done; the teacher answers are not
    answers = ppgguf.calibration.answers.teacher_answers
    def held_answers(*a, **k):
        hold("calibrate")
        return answers(*a, **k)
    ppgguf.calibration.answers.teacher_answers = held_answers
elif where == "export":  # the F32 GGUF is written to its temporary name, not yet renamed
    write_tensors = gguf.GGUFWriter.write_tensors_to_file
    def held_write(self, *a, **k):
        result = write_tensors(self, *a, **k)
        if str(self.path).endswith(".f32.gguf.partial"):
            hold("export")
        return result
    gguf.GGUFWriter.write_tensors_to_file = held_write
elif where == "validate":  # the quantized file sits under its temporary name beside the output
    validate = ppgguf.build.finish.validate_gguf
    def held_validate(*a, **k):
        hold("validate")
        return validate(*a, **k)
    ppgguf.build.finish.validate_gguf = held_validate

# A shell without job control starts background commands with SIGINT ignored, and Python keeps
# that; a user's Ctrl-C reaches the build with Python's usual handler, so give the child that one.
signal.signal(signal.SIGINT, signal.default_int_handler)

from ppgguf.cli import app
app(sys.argv[2:], prog_name="ppgguf")
"""


def _start(hold_at: str, args: list, home: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PPGGUF_HOME": str(home), "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
    with open(log, "wb") as sink:
        return subprocess.Popen(
            [sys.executable, "-c", DRIVER, hold_at, *map(str, args)], stdout=subprocess.DEVNULL, stderr=sink,
            env=env, cwd=REPO,
        )


def _wait_for(proc: subprocess.Popen, log: Path, marker: str, timeout: float = 240.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(encoding="utf-8", errors="replace")
        if marker in text:
            return text
        if proc.poll() is not None:
            pytest.fail(f"the build ended (rc {proc.returncode}) before '{marker}':\n{text}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"no '{marker}' within {timeout}s:\n{log.read_text(errors='replace')}")


def _run_to_end(hold_at: str, args: list, home: Path, log: Path) -> tuple[int, str]:
    proc = _start(hold_at, args, home, log)
    try:
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return rc, log.read_text(encoding="utf-8", errors="replace")


def _no_output(out_dir: Path) -> None:
    assert sorted(p.name for p in out_dir.iterdir()) == [], sorted(p.name for p in out_dir.iterdir())


def test_killed_builds_resume_to_the_same_file(tiny_llama, tmp_path, monkeypatch):
    recipe = write(tmp_path / "persona.toml", PERSONA_RECIPE)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "mirela.gguf"
    args = ["build", CHARACTER, "--out", out, "--base", tiny_llama.dir, "--recipe", recipe, "--device", "cpu"]
    home = tmp_path / "home"
    runs = home / "runs"

    # 1. SIGKILL in the middle of calibration.
    log1 = tmp_path / "1.log"
    proc = _start("calibrate", args, home, log1)

    # Meanwhile, the reference: one uninterrupted build in its own PPGGUF_HOME (in this process).
    monkeypatch.setenv("PPGGUF_HOME", str(tmp_path / "home-reference"))
    reference_out = tmp_path / "reference" / "mirela.gguf"
    reference_out.parent.mkdir()
    reference = build(BuildOptions(character=CHARACTER, out=reference_out, recipe=str(recipe),
                                   overrides={"base": str(tiny_llama.dir)}, device="cpu"))
    assert reference.report["scoring"], "the persona scorer ran"

    text = _wait_for(proc, log1, "@@ held at calibrate")
    assert "- Teacher answers in the persona's voice" in text
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    _no_output(out_dir)
    (work,) = runs.iterdir()
    assert len(list((home / "teachers").glob("*.f16.gguf"))) == 1 and not (work / "plan.json").exists()
    refs = sorted((home / "references").glob("*/persona-*.safetensors"))
    assert len(refs) == 2  # one file per reference persona of the recipe, written as each is done
    refs_mtime = [ref.stat().st_mtime_ns for ref in refs]
    assert not list(home.glob("calibration/*.json")), "the calibration set was not finished"

    # 2. Rerun; SIGKILL in the middle of export. The finished parts of calibration are reused.
    log2 = tmp_path / "2.log"
    proc = _start("export", args, home, log2)
    text = _wait_for(proc, log2, "@@ held at export")
    assert "- Reusing the dense teacher GGUF (cached per base model)" in text, text
    assert "- Reusing the reference persona states" in text, text
    assert "- Writing GGUF" in text
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    _no_output(out_dir)
    assert [ref.stat().st_mtime_ns for ref in refs] == refs_mtime
    (calibration,) = (home / "calibration").glob("*.json")
    examples = json.loads(calibration.read_text(encoding="utf-8"))
    assert examples and all(e["answer"] for e in examples), "the tiny model answered as its own teacher"
    assert (work / "plan.json").is_file()
    assert list(work.glob("model-*.f32.gguf.partial")) and not list(work.glob("model-*.f32.gguf"))

    # 3. Rerun; SIGINT while validating: exit 130, a message, and the quantized temporary file removed.
    log3 = tmp_path / "3.log"
    proc = _start("validate", args, home, log3)
    text = _wait_for(proc, log3, "@@ held at validate")
    assert "- Reusing the pruning plan" in text, text
    assert "Reusing the exported GGUF" not in text, "a half-written export must not be reused"
    _no_output(out_dir)  # the quantized file waits for validation in the run directory, not beside the output
    assert list(work.glob("staged/mirela.Q8_0.gguf.partial"))
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    text = log3.read_text(encoding="utf-8", errors="replace")
    assert "interrupted" in text and "Traceback" not in text, text
    _no_output(out_dir)
    assert list(work.glob("model-*.f32.gguf"))

    # 4. Rerun to the end: every finished stage is reused, and the bytes are the uninterrupted build's.
    rc, text = _run_to_end("none", args, home, tmp_path / "4.log")
    assert rc == 0, text
    assert "- Reusing the pruning plan" in text and "- Reusing the exported GGUF" in text, text
    assert "Scoring channels and heads" not in text and "Building the persona calibration set" not in text
    assert out.is_file()
    assert sha256(out) == sha256(reference_out)
    assert not [p for p in out_dir.iterdir() if "partial" in p.name or p.name.endswith(".tmp")]
    assert not list(runs.rglob("*.partial")) and not list(runs.rglob("*.tmp"))
    # A finished build keeps its plan but not the F32 export, which another quant type writes again.
    assert (work / "plan.json").is_file() and not list(work.glob("model-*.f32.gguf"))
    other = out_dir / "mirela-f16.gguf"
    rc, text = _run_to_end("none", args[:3] + [other] + args[4:] + ["--quant", "F16"], home, tmp_path / "5.log")
    assert rc == 0, text
    assert "- Reusing the pruning plan" in text and "- Writing GGUF" in text, text
    assert other.is_file() and not list(work.glob("model-*.f32.gguf"))


# --------------------------------------------------------------------------------------------
# 3. Determinism and provenance


def _build(tmp_path: Path, monkeypatch, name: str, recipe_text: str, base: Path, **overrides):
    monkeypatch.setenv("PPGGUF_HOME", str(tmp_path / f"home-{name}"))
    recipe = write(tmp_path / f"{name}.toml", recipe_text)
    out = tmp_path / name / "npc.gguf"
    out.parent.mkdir()
    return build(BuildOptions(character=CHARACTER, out=out, recipe=str(recipe),
                              overrides={"base": str(base), **overrides}, device="cpu"))


def test_same_seed_same_bytes_and_report_provenance(tiny_llama, tmp_path, monkeypatch):
    a = _build(tmp_path, monkeypatch, "a", WANDA_RECIPE, tiny_llama.dir)
    b = _build(tmp_path, monkeypatch, "b", WANDA_RECIPE, tiny_llama.dir)
    assert a.report["run_dir"] != b.report["run_dir"]
    assert sha256(a.path) == sha256(b.path)

    report = json.loads(a.report_path.read_text(encoding="utf-8"))
    versions = report["versions"]
    for key in ("ppgguf", "torch", "transformers", "gguf", "llama_cpp_python", "llama_cpp", "ggml"):
        assert versions.get(key) and versions[key] != "unknown", (key, versions)
    assert report["recipe"]["seed"] == 0
    inputs = report["inputs"]
    assert inputs["base_sha256"] == report["base"]["sha256"] and len(inputs["base_sha256"]) == 64
    assert inputs["character_sha256"] == sha256(CHARACTER)
    assert inputs["recipe_file_sha256"] == sha256(tmp_path / "a.toml")
    assert re.fullmatch(r"[0-9a-f]{64}", inputs["recipe_sha256"])
    assert inputs["recipe_sha256"] == json.loads(b.report_path.read_text())["inputs"]["recipe_sha256"]


def test_random_method_depends_on_the_seed(tiny_llama, tmp_path, monkeypatch):
    recipe = tiny_recipe("random")
    plans = []
    for seed in (0, 1):
        result = _build(tmp_path, monkeypatch, f"seed{seed}", recipe, tiny_llama.dir, seed=seed)
        assert result.report["recipe"]["seed"] == seed
        plans.append(json.loads((Path(result.report["run_dir"]) / "plan.json").read_text())["plan"])
    assert plans[0] != plans[1]


# --------------------------------------------------------------------------------------------
# 4. Persona text is data

TRICKY_PERSONA = (
    "Name: Zoë \"Quill\" O'Hara\n"
    "Zoë keeps a ledger of {{ user }} debts and {% raw %}template tags{% endraw %} for fun.\n"
    "She says \"hello\" and 'goodbye', writes paths like C:\\temp\\new and \\n literally,\n"
    "\n"
    "and mixes languages: naïve café, Straße, 東京, emoji 🙂. Braces {like this} and }} {{ stay as they are.\n"
)


def test_persona_text_survives_unchanged(tiny_llama, tmp_path):
    character = write(tmp_path / "zoe.txt", TRICKY_PERSONA)
    persona = load_persona(character)
    for piece in ("{{ user }}", "{% raw %}", '"hello"', "C:\\temp\\new", "東京", "🙂", "}} {{"):
        assert piece in persona.system_prompt, piece
    recipe = write(tmp_path / "magnitude.toml", MAGNITUDE_RECIPE)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "zoe.gguf"
    result = _invoke(["build", character, "--out", out, "--base", tiny_llama.dir, "--recipe", recipe,
                      "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)

    shown = _invoke(["inspect", out, "--json"])
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.stdout)
    assert info["ppgguf"]["ppgguf.system_prompt"] == persona.system_prompt
    assert info["ppgguf"]["ppgguf.persona.name"] == persona.name == 'Zoë "Quill" O\'Hara'

    modelfile = out.with_name("zoe.Modelfile")
    fields = modelfile_fields(modelfile.read_text(encoding="utf-8"))
    assert fields["system"] == persona.system_prompt
    assert fields["from"] == "./zoe.gguf"


def test_disk_full_mid_build_is_one_line(tiny_llama, tmp_path, monkeypatch):
    """An OSError from the machine (here ENOSPC while exporting) is reported on one line, nothing left behind."""

    def full(model, family, spec, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ppgguf.build.pipeline, "export_gguf", full)
    _assert_magnitude_build_refused(tmp_path, tiny_llama.dir, r"No space left on device \(.*\.f32\.gguf\)")
