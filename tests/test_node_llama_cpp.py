"""A baked file in an independent llama.cpp front end: node-llama-cpp's LlamaChatSession, defaults.

node-llama-cpp formats the conversation with its own ChatML wrapper and its own default system prompt
("You are a helpful, respectful and honest assistant..."): the file's template, and the persona
prompt in it, never reach the model; only the weights can carry the character there. This test
holds the file to loading and answering there. Whether the answer is in character is measured by
benchmarks/fidelity.py --bake (the "+generic" rows), not asserted: on SmolLM2-135M it is not yet
(README, "The character in the weights"). The pinned npm package is installed once into pytest's
cache (under a minute and 700 MB from the npm registry); the test is skipped, with the reason,
where node or npm is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ppgguf.cli import app

pytestmark = pytest.mark.real_model

NODE_LLAMA_CPP = "node-llama-cpp@3.21.1"
HERE = Path(__file__).resolve().parent
CHARACTER = HERE.parent / "examples" / "captain_mirela.txt"


@pytest.fixture(scope="module")
def node_llama_cpp(request) -> Path:
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm are needed to run a GGUF in node-llama-cpp")
    root = Path(request.config.cache.mkdir("node-llama-cpp"))
    if not (root / "node_modules" / "node-llama-cpp" / "package.json").is_file():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(root), "-E", NODE_LLAMA_CPP],
                       check=True, capture_output=True, timeout=900)
    script = root / "node_chat.mjs"  # beside node_modules, so its import resolves there
    shutil.copyfile(HERE / "node_chat.mjs", script)
    return script


def ask(script: Path, gguf: Path, question: str) -> dict:
    done = subprocess.run(["node", str(script), str(gguf), question, str(min(os.cpu_count() or 1, 4))],
                          capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# The shortest bake on the real model: a few calibration answers and steps.
BAKE_RECIPE = """
[calibration]
candidate_questions = 16
reference_personas = 2
selected_questions = 8
answer_tokens = 32
[train]
batch_size = 2
bake_steps = 4
[export]
quant = "Q8_0"
imatrix = "none"
[validate]
prompts = 2
"""


@pytest.fixture(scope="module")
def baked(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("baked-real")
    out, recipe = root / "mirela.gguf", root / "bake.toml"
    recipe.write_text(BAKE_RECIPE, encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PPGGUF_HOME", str(root / "home"))
        result = CliRunner().invoke(app, ["build", str(CHARACTER), "--recipe", str(recipe), "--bake", "-o", str(out),
                                          "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def test_a_baked_file_loads_and_answers_in_node_llama_cpp_with_its_own_chat_wrapper(node_llama_cpp, baked):
    reply = ask(node_llama_cpp, baked, "What is your name, and what do you do?")
    assert reply["wrapper"] == "ChatML"  # node-llama-cpp's own formatting, not the file's template
    assert len(reply["answer"].split()) >= 5, reply["answer"]
