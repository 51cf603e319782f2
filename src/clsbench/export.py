"""Export a trained cell as a plain transformers model, with a model card.

    python -m clsbench.export --cell results/<dataset>/<model>/<approach>/r<rank>/s<seed> --out DIR [--force]
    python -m clsbench.export --best results/<dataset>/best.json --out DIR

head, frozen and encoder cells become an ``AutoModelForSequenceClassification`` folder: the 4-bit
base de-quantised to float32, the LoRA weights merged into it, the trained ``score`` head,
``id2label`` / ``label2id`` / ``problem_type`` in its config and the tokenizer with its pad token, so
that ``transformers.pipeline("text-classification", model=DIR)`` loads it without peft. An instruct
cell becomes the merged ``AutoModelForCausalLM`` plus ``prompt.json`` (the prompt around a text, the
label set, the token budgets). ``README.md`` in DIR is the model card: data, approach,
hyperparameters, the cell's test micro-/macro-F1 with its 95% CI, calibration and throughput, and
how far the export's probabilities on the cell's test texts are from the cell's cached ones
(``export_check``; merging into de-quantised weights changes the numbers a little).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import UserError, adapters, approaches, faults, fitted, layout
from .apply import best_cell, cell_settings, parse_cell
from .cell import HPARAMS_FILE
from .data import load_prepared
from .hparams import typed
from .io import atomic_path, read_json, run_cli, write_json

PROMPT_FILE = "prompt.json"


def dequantized(load):
    """``load(path)``, then its 4-bit layers replaced by float32 ones holding the de-quantised weights."""
    import torch

    def loader(path):
        model = load(path)
        if getattr(model, "hf_quantizer", None) is not None:
            model = model.dequantize(dtype=torch.float32)
        return model
    return loader


def classifier_model(adapter: Path, h, env: dict):
    """The cell's classifier in float32 with nothing but transformers modules (LoRA merged)."""
    from safetensors.torch import load_file

    from .classifier import load_classifier

    if adapters.is_peft(adapter):
        return adapters.load_peft(adapter, dequantized(
            lambda p: load_classifier(p, h, env, head_module=h.head_module))).merge_and_unload()
    if (adapter / adapters.FROZEN_HEAD).exists():
        model = dequantized(lambda p: load_classifier(p, h, env, head_module=h.head_module))(
            adapter / adapters.ADAPTER_BASE)
        model.load_state_dict(load_file(adapter / adapters.FROZEN_HEAD), strict=False)
        return model
    return load_classifier(adapter, None, env, head_module=h.head_module)


def causal_model(adapter: Path, h, env: dict):
    from .instruct import load_lm

    return adapters.load_peft(adapter, dequantized(lambda p: load_lm(p, h, env))).merge_and_unload()


def check_classifier(out: Path, cell: Path, data_dir: Path, h, multi: bool) -> dict:
    """The exported folder, loaded by plain transformers, on the cell's test texts against the cell's
    cached probabilities: max |Δprob| and the share of texts whose decided labels change."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from .classifier import predict_logits, probabilities

    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    cached = pd.read_parquet(cell / "predictions.parquet")
    texts = list(load_prepared(data_dir)[0]["test"].set_index("id").loc[cached["id"], "text"])
    logits, _ = predict_logits(model, tok, texts, h.max_length, 16, "cpu")  # truncated, as pipeline reads
    return compare(probabilities(logits, multi), cached, multi, read_json(cell / "predict_info.json").get("threshold", 0.5))


def check_causal(out: Path, cell: Path, data_dir: Path, h) -> dict:
    """The merged causal LM in score mode (the cell's decision rule) against the cell's cached scores."""
    import torch
    from transformers import AutoModelForCausalLM

    from .models import load_tokenizer
    from .prompting import Encoder
    from .scoring import run_mode

    splits, labels, multi = load_prepared(data_dir)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tok = load_tokenizer(out)
    tok.padding_side = "left"
    enc = Encoder(tok, labels, multi, h, train_labels=splits["train"]["labels"])
    cached = pd.read_parquet(cell / "predictions.parquet")
    texts = splits["test"].set_index("id").loc[cached["id"], "text"]
    probs, _, _ = run_mode("score", model, enc, [enc.prompt_ids(t) for t in texts], h, {"device": "cpu"})
    return compare(probs, cached, multi, h.threshold)


def compare(probs: np.ndarray, cached: pd.DataFrame, multi: bool, threshold) -> dict:
    from .metrics import decide

    ref = np.stack(cached["probs"]).astype(np.float64)
    threshold = np.asarray(threshold) if isinstance(threshold, list) else threshold
    changed = (decide(probs, multi, threshold) != decide(ref, multi, threshold)).any(axis=1)
    return {"n": len(ref), "max_abs_prob_diff": float(np.abs(probs - ref).max()),
            "mean_abs_prob_diff": float(np.abs(probs - ref).mean()), "changed_decisions": int(changed.sum()),
            "changed_share": float(changed.mean())}


def how_exported(spec, hp: dict) -> str:
    """What the exported weights are, true to the approach (the model card's first line)."""
    if spec.stages == "fit":
        return ("a SetFit model: the sentence encoder (" + ("fine-tuned contrastively" if "body_learning_rate" in hp
                else "frozen, as the cell used it") + ") and the cell's fitted logistic regression.")
    if spec.ranked:
        return "LoRA merged into the de-quantised float32 base, no peft needed."
    if hp.get("quantization", "none") != "none":
        return "the frozen base de-quantised to float32 with its trained classification head, no peft needed."
    return "every weight fine-tuned (full fine-tuning; no LoRA, nothing merged), float32."


def model_card(keys: dict, spec, hp: dict, metrics: dict, stats: dict, labels: list[str], check: dict,
               kind: str) -> str:
    ci = metrics.get("f1_micro_ci95") or [None, None]
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    lines = [
        "---", f"library_name: {'setfit' if kind == 'setfit' else 'transformers'}",
        f"pipeline_tag: {'text-classification' if kind == 'setfit' else kind}", "tags: [clsbench]", "---", "",
        f"# {keys['dataset']}: {spec.title} on {keys['model']}"
        + (f" (LoRA r={keys['rank']})" if spec.ranked else "") + f", seed {keys['seed']}", "",
        f"Exported by `python -m clsbench.export` from the cell `{keys['dataset']}/{keys['model']}/{keys['approach']}/"
        f"r{keys['rank']}/s{keys['seed']}`: {how_exported(spec, hp)}", "",
        "## Data", "",
        f"- dataset `{keys['dataset']}`: {len(labels)} labels ({', '.join(labels)}), "
        f"{'multi-label' if metrics.get('multi_label') else 'single-label'}",
        f"- splits: {', '.join(split + ' ' + str(stats[split]['n']) for split in ('train', 'val', 'test') if split in stats)} texts"
        + (f"; each text cut to its first {stats['max_words']} words" if stats.get("max_words") else ""), "",
        "## Test figures of the cell", "",
        "| micro-F1 (95% CI) | macro-F1 | accuracy | ECE | inference texts/s | training s |", "|---|---|---|---|---|---|",
        f"| {fmt(metrics.get('f1_micro'))} ({fmt(ci[0])}-{fmt(ci[1])}) | {fmt(metrics.get('f1_macro'))} | "
        f"{fmt(metrics.get('accuracy', metrics.get('subset_accuracy')))} | {fmt(metrics.get('ece'))} | "
        f"{fmt(metrics.get('infer_samples_per_second'))} | {fmt(metrics.get('train_wall_seconds'))} |", "",
        f"Measured on {metrics.get('device', 'n/a')} ({metrics.get('dtype', 'n/a')}, quantization "
        f"{metrics.get('quantization', 'n/a')}), as the cell ran.", "",
        "## This export against the cell", "",
        f"On the cell's {check['n']} test texts: max |Δprob| {check['max_abs_prob_diff']:.2e}, mean "
        f"{check['mean_abs_prob_diff']:.2e}; decided labels changed for {check['changed_decisions']} texts "
        f"({100 * check['changed_share']:.1f}%).", "",
        "## Hyperparameters", "", "```json", json.dumps(hp, indent=2, sort_keys=True), "```", ""]
    if kind == "text-classification":
        lines += ["## Use", "", "```python", "from transformers import pipeline",
                  "clf = pipeline(\"text-classification\", model=\"<this folder>\", top_k=None"
                  + (", function_to_apply=\"sigmoid\")" if metrics.get("multi_label") else ")"),
                  f"clf([\"some text\"], truncation=True, max_length={hp.get('max_length')})", "```", ""]
        if hp.get("threshold") == "tuned" and metrics.get("multi_label"):
            lines += [f"A label is predicted where its probability reaches its own threshold, chosen on validation: "
                      f"`{adapters.THRESHOLDS_FILE}` in this folder (not 0.5).", ""]
        if hp.get("long_text") == "chunk":
            lines += ["The cell read long texts in windows (long_text: chunk); this model reads the first "
                      f"{hp.get('max_length')} tokens unless you chunk as `clsbench.apply` does.", ""]
    elif kind == "setfit":
        lines += ["## Use", "", "```python", "from setfit import SetFitModel",
                  "model = SetFitModel.from_pretrained(\"<this folder>\")",
                  "model.predict_proba([\"some text\"])  # columns: " + ("labels.json's order" if metrics.get(
                      "multi_label") else "model.model_head.classes_"),
                  "model.predict([\"some text\"], as_numpy=True)  # labels (as_numpy: they are strings)", "```", ""]
    else:
        lines += ["## Use", "", f"`{PROMPT_FILE}` holds the prompt around a text (`head` + text cut to `text_tokens` "
                  "tokens + `tail`), the label names and the answer format; `clsbench.apply` uses it for you.", ""]
    return "\n".join(lines)


def export(cell: str | Path, out: str | Path, force: bool = False, config_path: str | Path | None = None,
           threads: int | None = None) -> dict:
    """Write the export of ``cell`` to ``out``; returns the check against the cell's cached probabilities."""
    from .models import load_tokenizer
    from .runtime import device_setup

    cell, out = Path(cell), Path(out)
    keys = parse_cell(cell)
    spec = approaches.get(keys["approach"])
    if spec.stages == "fit":
        if not (cell / fitted.MODEL_FILE).exists():
            raise UserError(f"--cell {cell}: {fitted.MODEL_FILE} missing; the cell is incomplete (run snakemake for it)")
        if not hasattr(fitted.load(cell)[0], "model"):  # no sentence encoder in the pipeline: TF-IDF
            raise UserError(f"--cell {cell}: approach '{spec.name}' has no neural model to export; its fitted "
                            "scikit-learn pipeline is model.joblib in the cell (joblib.load), or label texts with "
                            "python -m clsbench.apply")
        return export_setfit(cell, out, force, keys, spec, config_path)
    if spec.stages == "predict":
        raise UserError(f"--cell {cell}: approach '{spec.name}' trains nothing: use the model itself "
                        f"(results/models/{keys['model']}) with its prompts, or python -m clsbench.apply")
    if out.exists() and not force:
        raise UserError(f"--out {out}: exists; pass --force to replace it")
    adapter = cell / "adapter"
    for name in ("metrics.json", "predictions.parquet", "predict_info.json", "adapter"):
        if not (cell / name).exists():
            raise UserError(f"--cell {cell}: {name} missing; the cell is incomplete (run snakemake for it)")
    faults.check_sums(adapter, then="copy it again from the run that made it, or run snakemake there to retrain the "
                      "cell", remove=False)  # names the file that differs; a copied cell is the user's
    hp, _ = cell_settings(cell, keys, config_path)
    h = typed(spec.hparams_class, hp, f"{cell / HPARAMS_FILE}")
    data_dir = layout.data_dir_of(cell)
    labels_meta = read_json(data_dir / "labels.json")
    labels, multi = labels_meta["labels"], labels_meta["multi_label"]
    env = device_setup(threads, "fp32")
    base = adapter / adapters.ADAPTER_BASE if (adapter / adapters.ADAPTER_BASE).exists() else adapter
    tok = load_tokenizer(base)
    causal = spec.generative
    model = causal_model(adapter, h, env) if causal else classifier_model(adapter, h, env)
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    if not causal:
        model.config.update({"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in enumerate(labels)},
                             "problem_type": "multi_label_classification" if multi else "single_label_classification",
                             "pad_token_id": tok.pad_token_id})
    with atomic_path(out, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if causal:
            from .prompting import Encoder

            splits, _, _ = load_prepared(data_dir)
            enc = Encoder(tok, labels, multi, h, train_labels=splits["train"]["labels"])
            write_json(tmp / PROMPT_FILE, {"head": enc.head, "tail": enc.tail, "labels": labels, "multi_label": multi,
                                           "label_delimiter": enc.delimiter, "chat_template": enc.chat,
                                           "text_tokens": enc.text_budget, "max_new_tokens": enc.answer_budget,
                                           "max_length": enc.max_length, "threshold": h.threshold})
        check = check_causal(tmp, cell, data_dir, h) if causal else check_classifier(tmp, cell, data_dir, h, multi)
        metrics = read_json(cell / "metrics.json")
        stats = read_json(data_dir / "stats.json") if (data_dir / "stats.json").exists() else {}
        kind = "text-generation" if causal else "text-classification"
        (tmp / "README.md").write_text(model_card(keys, spec, hp, metrics, stats, labels, check, kind))
        write_json(tmp / "export_check.json", check)
        if (adapter / adapters.THRESHOLDS_FILE).exists():  # threshold: tuned - the per-label cut-offs decide
            write_json(tmp / adapters.THRESHOLDS_FILE, read_json(adapter / adapters.THRESHOLDS_FILE))
    return check


def export_setfit(cell: Path, out: Path, force: bool, keys: dict, spec, config_path) -> dict:
    """A fitted cell on a sentence encoder (embed, setfit) as a SetFit model folder, loadable with
    ``SetFitModel.from_pretrained`` alone; checked against the cell's cached test probabilities."""
    from setfit import SetFitModel

    from .embed import as_setfit

    if out.exists() and not force:
        raise UserError(f"--out {out}: exists; pass --force to replace it")
    for name in ("metrics.json", "predictions.parquet"):
        if not (cell / name).exists():
            raise UserError(f"--cell {cell}: {name} missing; the cell is incomplete (run snakemake for it)")
    hp, _ = cell_settings(cell, keys, config_path)
    h = typed(spec.hparams_class, hp, f"{cell / HPARAMS_FILE}")
    data_dir = layout.data_dir_of(cell)
    meta = read_json(data_dir / "labels.json")
    labels, multi = meta["labels"], meta["multi_label"]
    model = as_setfit(cell, multi, labels)
    with atomic_path(out, is_dir=True) as tmp:
        model.save_pretrained(str(tmp))
        loaded = SetFitModel.from_pretrained(str(tmp))  # what a user gets, without clsbench
        cached = pd.read_parquet(cell / "predictions.parquet")
        texts = list(load_prepared(data_dir)[0]["test"].set_index("id").loc[cached["id"], "text"])
        probs = loaded.predict_proba(texts, as_numpy=True)
        if not multi:  # the classifier's class order -> labels.json's
            probs = fitted.in_label_order(probs, list(loaded.model_head.classes_), labels)
        check = compare(probs, cached, multi, h.threshold)
        metrics = read_json(cell / "metrics.json")
        stats = read_json(data_dir / "stats.json") if (data_dir / "stats.json").exists() else {}
        (tmp / "README.md").write_text(model_card(keys, spec, hp, metrics, stats, labels, check, "setfit"))
        write_json(tmp / "export_check.json", check)
    return check


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Export a trained cell as a plain transformers model.")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--cell", help="results/<dataset>/<model>/<approach>/r<rank>/s<seed>")
    which.add_argument("--best", help="results/<dataset>/best.json: the cell it names (chosen on validation)")
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    parser.add_argument("--config", help="the config the cell was made with (default: the cell's hparams.json)")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    cell = args.cell or best_cell(args.best, "export")
    check = export(cell, args.out, args.force, args.config, args.threads)
    print(f"{args.out}: exported; on {check['n']} test texts max |dprob| {check['max_abs_prob_diff']:.2e}, "
          f"{check['changed_decisions']} decisions changed")


if __name__ == "__main__":
    run_cli(main)
