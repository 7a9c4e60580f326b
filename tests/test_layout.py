"""The package layout: subpackages by pipeline stage, imports only downward, small modules.

`LAYERS` below is the one statement of the order: a module may import from its own layer or a
lower one, never a higher one. Every import counts, at the top of a module or inside a function,
relative or absolute; only imports under `if TYPE_CHECKING:` (annotations, never run) are exempt.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ppgguf"
MAX_LINES = 300

# Layer -> the modules and subpackages in it, lowest first (a dotted name covers everything under it).
LAYERS = [
    # L0 foundation: errors, run directories, stage timing and memory; GGUF files and llama.cpp (no torch)
    ("foundation", ["ppgguf", "ppgguf.errors", "ppgguf.runs", "ppgguf.stages", "ppgguf.llama"]),
    ("recipe", ["ppgguf.recipe"]),  # L1: every knob of a build (imports neither torch nor llama_cpp)
    ("inputs", ["ppgguf.inputs"]),  # L2: the character and the base model
    ("calibration", ["ppgguf.calibration"]),  # L3: the sequences scorers and training read
    ("pruning", ["ppgguf.pruning"]),  # L4: scores -> plan -> smaller model -> healed or baked
    ("export", ["ppgguf.export"]),  # L5: GGUF writing, importance matrix, quantization, sizing
    ("evaluation", ["ppgguf.evaluation"]),  # L6: measures shared by the gate, eval, bench and benchmarks/
    ("build", ["ppgguf.build"]),  # L7: the pipeline and what is placed beside the file
    ("use", ["ppgguf.use"]),  # L8: chat, inspect, eval, bench
    ("cli", ["ppgguf.cli"]),  # L9: parse, call, print
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """The layer of `module`: that of the longest dotted prefix LAYERS names."""
    best = None
    for level, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), level)
    if best is None:
        raise AssertionError(f"{module} is in no layer of tests/test_layout.py's LAYERS")
    return best[1]


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:`."""
    exempt = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            exempt.update(id(sub) for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom)))
    return exempt


def imported_modules(module: str, path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ppgguf module `module` imports at run time; `from X import name` counts
    X.name where that is a module, else X."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    known = modules()
    exempt = _type_checking_only(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in exempt:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "ppgguf"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "ppgguf":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if sub in known else target))
    return found


def test_every_module_is_in_a_layer():
    for module in modules():
        layer_of(module)


def test_imports_point_only_downward():
    upward = []
    for module, path in modules().items():
        mine = layer_of(module)
        for line, target in imported_modules(module, path):
            if layer_of(target) > mine:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {module} ({LAYERS[mine][0]}) imports "
                              f"{target} ({LAYERS[layer_of(target)][0]})")
    assert not upward, "imports that point upward:\n" + "\n".join(upward)


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    """The rule above is not vacuous: an import inside a function, relative, is found and placed in its layer."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ..build import pipeline\n    from .reader import read_header\n", encoding="utf-8")
    found = [target for _, target in imported_modules("ppgguf.llama.probe", probe)]
    assert found == ["ppgguf.build.pipeline", "ppgguf.llama.reader"]
    assert [layer_of(target) for target in found] == [7, 0]


def test_no_module_is_over_300_lines():
    long = {str(path.relative_to(PACKAGE.parent)): n for path in modules().values()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, long


def test_subpackage_inits_hold_a_docstring_and_no_imports():
    for path in PACKAGE.rglob("__init__.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        assert ast.get_docstring(tree), path
        if path.parent in (PACKAGE, PACKAGE / "pruning" / "importance"):  # the version; the scorers' registry
            continue
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                    and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")], path


@pytest.mark.parametrize("module", ["ppgguf.recipe"] + sorted(m for m in modules() if m.startswith("ppgguf.llama")))
def test_the_recipe_and_the_llama_modules_import_neither_torch_nor_llama_cpp(module):
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'llama_cpp') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_a_wheel_carries_every_subpackage():
    import tomllib

    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(config["tool"]["setuptools"]["packages"])
    packages = {module_name(path) for path in PACKAGE.rglob("__init__.py")}
    assert packages <= listed, sorted(packages - listed)
