"""Approach "head": QLoRA + a classification head on the last token's hidden state.

``AutoModelForSequenceClassification`` on a causal LM pools the rightmost non-pad token and feeds
it to a linear ``score`` layer; peft's SEQ_CLS task trains that head (modules_to_save) beside the
LoRA adapters. Single-label: cross-entropy; multi-label: sigmoid + BCE, threshold at inference.
Training uses the HF ``Trainer`` (early stopping on validation micro-F1, best epoch restored).

The saved ``adapter/`` folder loads with plain
``peft.AutoPeftModelForSequenceClassification.from_pretrained(adapter_dir)``: its
``base/`` sub-folder holds the classification config (labels, problem type, pad id) and links to
the base model's weights and tokenizer.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import UserError
from .data import load_prepared
from .io import atomic_path, read_json, run_cli, write_json
from .models import load_tokenizer, local_dir

ADAPTER_BASE = "base"


# ---------------------------------------------------------------- device, model
def device_setup(threads: int | None = None) -> dict:
    import torch
    from transformers.utils import logging

    logging.disable_progress_bar()
    if threads:
        torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    return {"cuda": cuda, "device": "cuda" if cuda else "cpu",
            "device_name": torch.cuda.get_device_name(0) if cuda else f"cpu ({torch.get_num_threads()} threads)",
            "compute_dtype": torch.bfloat16 if cuda else torch.float32}


def quantization_config(hp: dict, compute_dtype):
    """NF4 with double quantisation (QLoRA), or None when ``quantization: none``."""
    if hp.get("quantization", "nf4") == "none":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=hp.get("quantization", "nf4"),
                              bnb_4bit_use_double_quant=hp.get("double_quant", True),
                              bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=["score"])


def classification_kwargs(labels: list[str], multi_label: bool, pad_token_id: int) -> dict:
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)}, "pad_token_id": pad_token_id,
            "problem_type": "multi_label_classification" if multi_label else "single_label_classification"}


def load_classifier(path: str | Path, hp: dict, env: dict, **cls_kwargs):
    from transformers import AutoModelForSequenceClassification

    quant = quantization_config(hp, env["compute_dtype"])
    kwargs = {"dtype": env["compute_dtype"], **cls_kwargs}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": 0} if env["cuda"] else {"": "cpu"}
    model = AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)
    if quant is None:
        model.to(env["device"])
    return model


def lora_config(hp: dict, rank: int):
    from peft import LoraConfig, TaskType

    return LoraConfig(task_type=TaskType.SEQ_CLS, r=rank, lora_alpha=hp["lora_alpha"],
                      lora_dropout=hp["lora_dropout"], bias=hp.get("lora_bias", "none"),
                      target_modules=hp["target_modules"])


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) as the paper reports them: peft's count, corrected for 4-bit storage."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


# ---------------------------------------------------------------- data
def tokenize_split(df: pd.DataFrame, tok, labels: list[str], multi_label: bool, max_length: int):
    """A `datasets.Dataset` with input_ids / attention_mask / labels (int or multi-hot float)."""
    from datasets import Dataset

    index = {label: i for i, label in enumerate(labels)}
    enc = tok(list(df["text"]), truncation=True, max_length=max_length)
    if multi_label:
        y = np.zeros((len(df), len(labels)), dtype=np.float32)
        for r, row in enumerate(df["labels"]):
            y[r, [index[label] for label in row]] = 1.0
        target = y.tolist()
    else:
        target = [index[row[0]] for row in df["labels"]]
    return Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": target})


def probabilities(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    logits = logits.astype(np.float64)
    if multi_label:
        return 1.0 / (1.0 + np.exp(-logits))
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def decide(probs: np.ndarray, multi_label: bool, threshold: float) -> np.ndarray:
    """Indicator matrix of predicted labels."""
    if multi_label:
        return (probs >= threshold).astype(np.int8)
    out = np.zeros_like(probs, dtype=np.int8)
    out[np.arange(len(probs)), probs.argmax(axis=1)] = 1
    return out


def micro_f1_from_logits(logits: np.ndarray, y: np.ndarray, multi_label: bool, threshold: float) -> float:
    from sklearn.metrics import f1_score

    pred = decide(probabilities(logits, multi_label), multi_label, threshold)
    gold = y.astype(np.int8) if multi_label else np.eye(logits.shape[1], dtype=np.int8)[y]
    return float(f1_score(gold, pred, average="micro", zero_division=0))


# ---------------------------------------------------------------- training
class EvalTimer:
    """Trainer callback: time spent in per-epoch evaluation, so train samples/s can exclude it."""

    def __new__(cls):
        from transformers import TrainerCallback

        class _Timer(TrainerCallback):
            eval_seconds = 0.0
            _t0 = None

            def on_epoch_end(self, args, state, control, **kw):
                self._t0 = time.perf_counter()

            def on_evaluate(self, args, state, control, **kw):
                if self._t0 is not None:
                    self.eval_seconds += time.perf_counter() - self._t0
                    self._t0 = None

        return _Timer()


def build_optimizer(model, hp: dict, steps: int):
    """AdamW (8-bit via bitsandbytes by default) with a separate learning rate for the head."""
    import torch
    from transformers import get_scheduler

    head_lr = hp.get("head_learning_rate") or hp["learning_rate"]
    head, body = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (head if ".score." in name or name.startswith("score.") or "modules_to_save" in name else body).append(p)
    groups = [{"params": body, "lr": hp["learning_rate"]}, {"params": head, "lr": head_lr}]
    groups = [g for g in groups if g["params"]]
    if hp.get("optimizer", "adamw_8bit") == "adamw_8bit":
        import bitsandbytes as bnb

        opt = bnb.optim.AdamW8bit(groups, weight_decay=hp.get("weight_decay", 0.0))
    else:
        opt = torch.optim.AdamW(groups, weight_decay=hp.get("weight_decay", 0.0))
    sched = get_scheduler(hp.get("lr_scheduler", "linear"), opt,
                          num_warmup_steps=math.ceil(hp.get("warmup_ratio", 0.0) * steps), num_training_steps=steps)
    return opt, sched


def train(model_json: str, data_dir: str, out_dir: str, rank: int, seed: int, hp: dict,
          threads: int | None = None, lora: bool = True) -> dict:
    """Train one cell; writes ``adapter/``, ``train_log.jsonl`` and ``train_info.json`` into ``out_dir``."""
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import (DataCollatorWithPadding, EarlyStoppingCallback, Trainer, TrainingArguments,
                              set_seed)

    env = device_setup(threads)
    out_dir = Path(out_dir)
    info = read_json(model_json)
    splits, labels, multi = load_prepared(data_dir)
    tok = load_tokenizer(info["path"])
    threshold = hp.get("threshold", 0.5)
    set_seed(seed)
    model = load_classifier(info["path"], hp, env, **classification_kwargs(labels, multi, tok.pad_token_id))
    if hp.get("quantization", "nf4") != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, lora_config(hp, rank))
    trainable, total = count_parameters(model)

    train_ds = tokenize_split(splits["train"], tok, labels, multi, hp["max_length"])
    val_ds = tokenize_split(splits["val"], tok, labels, multi, hp["max_length"])
    steps_per_epoch = math.ceil(len(train_ds) / (hp["batch_size"] * hp["grad_accum"]))
    optimizers = build_optimizer(model, hp, steps_per_epoch * hp["max_epochs"])

    def compute_metrics(pred):
        return {"f1_micro": micro_f1_from_logits(pred.predictions, pred.label_ids, multi, threshold)}

    ckpt = out_dir / "checkpoints"
    args = TrainingArguments(
        output_dir=str(ckpt), per_device_train_batch_size=hp["batch_size"],
        per_device_eval_batch_size=hp["eval_batch_size"], gradient_accumulation_steps=hp["grad_accum"],
        num_train_epochs=hp["max_epochs"], eval_strategy="epoch", save_strategy="epoch", save_total_limit=1,
        load_best_model_at_end=True, metric_for_best_model="f1_micro", greater_is_better=True,
        max_grad_norm=hp.get("max_grad_norm", 1.0), logging_strategy="steps",
        logging_steps=max(1, steps_per_epoch // 5), seed=seed, data_seed=seed, bf16=env["cuda"],
        use_cpu=not env["cuda"], report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        save_only_model=True)
    timer = EvalTimer()
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                      processing_class=tok, data_collator=DataCollatorWithPadding(tok),
                      compute_metrics=compute_metrics, optimizers=optimizers,
                      callbacks=[EarlyStoppingCallback(early_stopping_patience=hp["patience"]), timer])
    if env["cuda"]:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - t0
    history = trainer.state.log_history
    _check_finite(history, out_dir)
    evals = [h for h in history if "eval_f1_micro" in h]
    best = max(evals, key=lambda h: h["eval_f1_micro"]) if evals else {}
    epochs_run = round(trainer.state.epoch or 0)
    train_seconds = wall - timer.eval_seconds
    n_tokens = int(sum(len(ids) for ids in train_ds["input_ids"]))
    train_info = {
        "approach": "head", "rank": rank, "seed": seed, "trainable_params": int(trainable), "total_params": int(total),
        "epochs_run": epochs_run, "best_epoch": round(best.get("epoch", 0)), "best_val_f1_micro": best.get("eval_f1_micro"),
        "train_wall_seconds": wall, "eval_seconds_during_training": timer.eval_seconds,
        "train_samples_per_second": epochs_run * len(train_ds) / train_seconds if train_seconds > 0 else None,
        "train_tokens_per_second": epochs_run * n_tokens / train_seconds if train_seconds > 0 else None,
        "train_loss": result.training_loss, "n_train": len(train_ds), "n_val": len(val_ds),
        "device": env["device_name"], "dtype": str(env["compute_dtype"]).replace("torch.", ""),
        "quantization": hp.get("quantization", "nf4"),
        "peak_memory_mb": _peak_memory_mb(env),
    }
    with (out_dir / "train_log.jsonl").open("w") as fh:
        for entry in history:
            fh.write(json.dumps(entry) + "\n")
    write_json(out_dir / "train_info.json", train_info)
    save_adapter(trainer.model, out_dir / "adapter", info, labels, multi, tok.pad_token_id)
    shutil.rmtree(ckpt, ignore_errors=True)
    return train_info


def _check_finite(history: list[dict], out_dir: Path) -> None:
    for h in history:
        if "loss" in h and not math.isfinite(h["loss"]):
            raise UserError(f"{out_dir}: loss became {h['loss']} at step {h.get('step')} "
                            f"(learning rate {h.get('learning_rate')}); lower the learning rate")


def _peak_memory_mb(env: dict) -> float:
    if env["cuda"]:
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_adapter(model, final: Path, info: dict, labels: list[str], multi: bool, pad_token_id: int) -> None:
    """Save adapter + head, plus ``base/`` (classification config + links to the base weights)."""
    from transformers import AutoConfig

    final = Path(final)
    with atomic_path(final, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        base_src = local_dir(info)
        base = tmp / ADAPTER_BASE
        base.mkdir()
        for f in base_src.iterdir():
            if f.is_file() and f.name != "config.json" and not f.name.startswith("."):
                os.symlink(os.path.relpath(f.resolve(), final / ADAPTER_BASE), base / f.name)
        config = AutoConfig.from_pretrained(str(base_src), **classification_kwargs(labels, multi, pad_token_id))
        config.save_pretrained(base)
        cfg_path = tmp / "adapter_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["base_model_name_or_path"] = str((final / ADAPTER_BASE).resolve())
        cfg_path.write_text(json.dumps(cfg, indent=2))


# ---------------------------------------------------------------- prediction
def predict_logits(model, tok, texts: list[str], max_length: int, batch_size: int, device: str) -> tuple[np.ndarray, int]:
    """Logits for ``texts``, batched in order of length (least padding); returns (logits, n_tokens)."""
    import torch

    enc = tok(texts, truncation=True, max_length=max_length)
    order = np.argsort([len(ids) for ids in enc["input_ids"]])
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    n_tokens = 0
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = tok.pad({"input_ids": [enc["input_ids"][i] for i in idx],
                             "attention_mask": [enc["attention_mask"][i] for i in idx]}, return_tensors="pt")
            n_tokens += int(batch["attention_mask"].sum())
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            out[idx] = logits.float().cpu().numpy()
    return out, n_tokens


def load_trained(adapter_dir: str | Path, hp: dict, env: dict):
    """The trained classifier: base (quantised as in training) + adapter + head."""
    from peft import PeftModel

    base_dir = Path(adapter_dir) / ADAPTER_BASE
    model = load_classifier(base_dir, hp, env)
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    model.eval()
    return model, load_tokenizer(base_dir)


def predict(adapter_dir: str, data_dir: str, out_dir: str, hp: dict, split: str = "test",
            threads: int | None = None) -> dict:
    """Write ``predictions.parquet`` (id, gold, probs, pred) and ``predict_info.json`` into ``out_dir``."""
    import torch

    env = device_setup(threads)
    splits, labels, multi = load_prepared(data_dir)
    df = splits[split]
    model, tok = load_trained(adapter_dir, hp, env)
    bs = hp.get("eval_batch_size", 8)
    warm = min(len(df), bs)
    predict_logits(model, tok, list(df["text"][:warm]), hp["max_length"], bs, env["device"])  # warm-up
    if env["cuda"]:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    logits, n_tokens = predict_logits(model, tok, list(df["text"]), hp["max_length"], bs, env["device"])
    if env["cuda"]:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    probs = probabilities(logits, multi)
    pred = decide(probs, multi, hp.get("threshold", 0.5))
    names = np.array(labels)
    table = pd.DataFrame({"id": df["id"].values, "gold": list(df["labels"]),
                          "probs": [p.astype(np.float32) for p in probs],
                          "pred": [list(names[row.astype(bool)]) for row in pred]})
    out_dir = Path(out_dir)
    info = {"split": split, "n": len(df), "infer_wall_seconds": wall, "infer_samples_per_second": len(df) / wall,
            "infer_tokens_per_second": n_tokens / wall, "eval_batch_size": bs, "device": env["device_name"],
            "peak_memory_mb": _peak_memory_mb(env), "labels": labels, "multi_label": multi}
    write_json(out_dir / "predict_info.json", info)
    with atomic_path(out_dir / "predictions.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    return info


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Approach 'head': train or predict one cell.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--model-json", required=True)
    t.add_argument("--data-dir", required=True)
    t.add_argument("--out-dir", required=True)
    t.add_argument("--rank", type=int, required=True)
    t.add_argument("--seed", type=int, required=True)
    p = sub.add_parser("predict")
    p.add_argument("--adapter-dir", required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out-dir", required=True)
    for a in (t, p):
        a.add_argument("--hparams", required=True, help="the approach's hyperparameters as JSON")
        a.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    hp = json.loads(args.hparams)
    if args.cmd == "train":
        info = train(args.model_json, args.data_dir, args.out_dir, args.rank, args.seed, hp, args.threads)
    else:
        info = predict(args.adapter_dir, args.data_dir, args.out_dir, hp, threads=args.threads)
    print(json.dumps(info, indent=2, default=str))


if __name__ == "__main__":
    run_cli(main)
