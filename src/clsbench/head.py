"""Approaches that put a classification head on a model, all trained with the HF ``Trainer``
(early stopping on validation micro-F1, best epoch restored):

head     QLoRA + a classification head on the last token's hidden state (the paper's Approach 1).
         ``AutoModelForSequenceClassification`` on a causal LM pools the rightmost non-pad token
         into a linear ``score`` layer; peft's SEQ_CLS task trains it (modules_to_save) beside LoRA.
frozen   the same head on the frozen (4-bit) LLM, no LoRA: the paper's "LoRA is essential" ablation.
encoder  full fine-tuning of a BERT-style encoder (all parameters trainable).

Single-label: softmax + cross-entropy; multi-label: sigmoid + BCE, threshold at inference.

What training learned lands in ``adapter/``: for ``head`` a peft checkpoint that loads with plain
``peft.AutoPeftModelForSequenceClassification.from_pretrained(adapter_dir)`` (its ``base/``
sub-folder holds the classification config and links to the base weights and tokenizer); for
``frozen`` ``score.safetensors`` beside the same ``base/``; for ``encoder`` a plain HF model folder.
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

from . import UserError, faults, throughput
from .data import load_prepared
from .faults import resume_point  # noqa: F401  (re-exported: other trainers resume the same way)
from .io import atomic_path, read_json, run_cli, write_json, write_jsonl, write_predictions
from .metrics import decide, indicator
from .models import load_tokenizer, local_dir, prefixed, text_coverage
from .progress import Progress, trainer_progress
from .runtime import (
    check_finite,
    count_parameters,
    device_setup,
    eval_timer,
    finite_loss_guard,
    optimizer_name,
    peak_memory_mb,
    quantization_config,
    run_key,
)

ADAPTER_BASE = "base"
FROZEN_HEAD = "score.safetensors"
THRESHOLDS, THRESHOLDS_FILE = "thresholds", "thresholds.json"  # threshold: tuned (per label, chosen on val)


# ---------------------------------------------------------------- model
def classification_kwargs(labels: list[str], multi_label: bool, pad_token_id: int) -> dict:
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)}, "pad_token_id": pad_token_id,
            "problem_type": "multi_label_classification" if multi_label else "single_label_classification"}


def load_classifier(path: str | Path, hp: dict, env: dict, dtype=None, **cls_kwargs):
    from transformers import AutoModelForSequenceClassification

    quant = quantization_config(hp, env["compute_dtype"])
    kwargs = {"dtype": dtype or env["compute_dtype"], **cls_kwargs}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": 0} if env["cuda"] else {"": "cpu"}
    model = AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)
    if quant is None:
        model.to(env["device"])
    faults.simulate_oom(model)
    return model


def lora_config(hp: dict, rank: int):
    from peft import LoraConfig, TaskType

    return LoraConfig(task_type=TaskType.SEQ_CLS, r=rank, lora_alpha=hp["lora_alpha"],
                      lora_dropout=hp["lora_dropout"], bias=hp.get("lora_bias", "none"),
                      target_modules=hp["target_modules"])



# ---------------------------------------------------------------- data
def tokenize_split(df: pd.DataFrame, tok, labels: list[str], multi_label: bool, max_length: int):
    """A `datasets.Dataset` with input_ids / attention_mask / labels (int or multi-hot float)."""
    from datasets import Dataset

    enc = tok(list(df["text"]), truncation=True, max_length=max_length)
    y = indicator(df["labels"], labels)
    target = y.astype(np.float32).tolist() if multi_label else y.argmax(1).tolist()
    return Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": target})


def probabilities(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    from scipy.special import expit, softmax

    logits = logits.astype(np.float64)
    return expit(logits) if multi_label else softmax(logits, axis=1)



def fixed_threshold(hp: dict) -> float:
    """The threshold of training-time validation: the configured one, 0.5 when it is ``tuned``."""
    threshold = hp.get("threshold", 0.5)
    return 0.5 if threshold == "tuned" else float(threshold)


def tune_thresholds(probs: np.ndarray, gold: np.ndarray, grid: np.ndarray | None = None) -> np.ndarray:
    """Per-label thresholds with the best F1 of that label on validation (``threshold: tuned``); ties
    go to the threshold closest to 0.5, and a label without a positive keeps 0.5."""
    from sklearn.metrics import f1_score

    grid = np.round(np.arange(0.05, 0.951, 0.05), 2) if grid is None else grid
    out = np.full(probs.shape[1], 0.5)
    for j in range(probs.shape[1]):
        if gold[:, j].sum() == 0:
            continue
        scores = [f1_score(gold[:, j], probs[:, j] >= g, zero_division=0) for g in grid]
        best = max(scores)
        out[j] = min((g for g, s in zip(grid, scores) if s == best), key=lambda g: abs(g - 0.5))
    return out


def tuned_thresholds(hp: dict, multi_label: bool, labels: list[str], val_probs, val_gold: np.ndarray) -> dict:
    """``{"thresholds": {label: threshold}}`` for ``threshold: tuned`` on multi-label data, else {}.
    ``val_probs``: a callable giving the validation probabilities of the restored best model (called
    only when needed)."""
    if not (multi_label and hp.get("threshold") == "tuned"):
        return {}
    return {THRESHOLDS: dict(zip(labels, tune_thresholds(val_probs(), val_gold)))}


def class_weights(rows, labels: list[str], multi_label: bool, mode: str):
    """Loss weights from the training labels (``class_weights: balanced``): cross-entropy weights
    n / (classes x count) (scikit-learn's "balanced"), or BCE ``pos_weight`` negatives / positives per
    label; None for ``none``. A class without training examples gets weight 1."""
    import torch

    if mode in (None, "none"):
        return None
    y = indicator(rows, labels).astype(np.float64)
    pos = y.sum(0)
    if multi_label:
        weights = np.where(pos > 0, (len(y) - pos) / np.maximum(pos, 1), 1.0)
    else:
        weights = np.where(pos > 0, len(y) / (len(labels) * np.maximum(pos, 1)), 1.0)
    return torch.tensor(weights, dtype=torch.float32)


def weighted_loss(weights, multi_label: bool):
    """A Trainer ``compute_loss_func`` with class weights (the model's own loss has none)."""
    import torch

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs.logits.float()
        w = weights.to(logits.device)
        if multi_label:
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float(), pos_weight=w)
        return torch.nn.functional.cross_entropy(logits, labels.view(-1), weight=w)

    return loss


def micro_f1_from_logits(logits: np.ndarray, y: np.ndarray, multi_label: bool, threshold: float) -> float:
    from sklearn.metrics import f1_score

    pred = decide(probabilities(logits, multi_label), multi_label, threshold)
    gold = y.astype(np.int8) if multi_label else np.eye(logits.shape[1], dtype=np.int8)[y]
    return float(f1_score(gold, pred, average="micro", zero_division=0))


# ---------------------------------------------------------------- training

def build_optimizer(model, hp: dict, steps: int, name: str):
    """AdamW of the ``name`` variant (:data:`clsbench.runtime.OPTIMIZERS`) with a separate learning rate for the head."""
    import torch
    from transformers import get_scheduler

    head_lr = hp.get("head_learning_rate") or hp["learning_rate"]
    head, body = [], []
    for param_name, p in model.named_parameters():
        if p.requires_grad:
            (head if ".score." in param_name or param_name.startswith("score.") or "modules_to_save" in param_name
             else body).append(p)
    groups = [{"params": body, "lr": hp["learning_rate"]}, {"params": head, "lr": head_lr}]
    groups = [g for g in groups if g["params"]]
    if name == "adamw_torch":
        opt = torch.optim.AdamW(groups, weight_decay=hp.get("weight_decay", 0.0))
    else:
        import bitsandbytes as bnb

        cls = {"adamw_bnb_8bit": bnb.optim.AdamW8bit, "paged_adamw_32bit": bnb.optim.PagedAdamW32bit,
               "paged_adamw_8bit": bnb.optim.PagedAdamW8bit}[name]
        opt = cls(groups, weight_decay=hp.get("weight_decay", 0.0))
    sched = get_scheduler(hp.get("lr_scheduler", "linear"), opt,
                          num_warmup_steps=math.ceil(hp.get("warmup_ratio", 0.0) * steps), num_training_steps=steps)
    return opt, sched


APPROACHES = ("head", "frozen", "encoder")


def build_model(info: dict, labels: list[str], multi: bool, tok, hp: dict, env: dict, approach: str, rank: int):
    """The model to train with the Trainer: QLoRA + head, or a fully trainable encoder."""
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training

    kwargs = classification_kwargs(labels, multi, tok.pad_token_id)
    if approach == "encoder":  # fp32 master weights; bf16 autocast through the Trainer (precision bf16)
        return load_classifier(info["path"], {**hp, "quantization": "none"}, env, dtype=torch.float32, **kwargs)
    model = load_classifier(info["path"], hp, env, **kwargs)
    if hp.get("quantization", "nf4") != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, lora_config(hp, rank))


def train(model_json: str, data_dir: str, out_dir: str, rank: int, seed: int, hp: dict,
          threads: int | None = None, approach: str = "head") -> dict:
    """Train one cell; writes ``adapter/``, ``train_log.jsonl`` and ``train_info.json`` into ``out_dir``."""
    import torch
    from transformers import DataCollatorWithPadding, EarlyStoppingCallback, Trainer, TrainingArguments, set_seed
    from transformers.trainer_callback import PrinterCallback

    if approach == "frozen":
        return train_frozen(model_json, data_dir, out_dir, seed, hp, threads)

    env = device_setup(threads, hp.get("precision"))
    out_dir = Path(out_dir)
    info = read_json(model_json)
    splits, labels, multi = load_prepared(data_dir)
    tok = load_tokenizer(info["path"])
    threshold = fixed_threshold(hp)
    set_seed(seed)
    model = build_model(info, labels, multi, tok, hp, env, approach, rank)
    trainable, total = count_parameters(model)

    train_ds = tokenize_split(splits["train"], tok, labels, multi, hp["max_length"])
    val_ds = tokenize_split(splits["val"], tok, labels, multi, hp["max_length"])
    steps_per_epoch = math.ceil(len(train_ds) / (hp["batch_size"] * hp["grad_accum"]))
    plan = faults.batch_plan(hp, out_dir, "train")  # smaller micro-batches after an out-of-memory failure
    optim = optimizer_name(hp, env, "adamw_torch" if approach == "encoder" else "adamw_bnb_8bit")
    optimizers = build_optimizer(model, hp, steps_per_epoch * hp["max_epochs"], optim)

    def compute_metrics(pred):
        return {"f1_micro": micro_f1_from_logits(pred.predictions, pred.label_ids, multi, threshold)}

    ckpt = out_dir / "checkpoints"
    args = TrainingArguments(
        output_dir=str(ckpt), per_device_train_batch_size=plan["batch_size"],
        per_device_eval_batch_size=plan["eval_batch_size"], gradient_accumulation_steps=plan["grad_accum"],
        num_train_epochs=hp["max_epochs"], eval_strategy="epoch", logging_nan_inf_filter=False, save_strategy="epoch", save_total_limit=1,
        load_best_model_at_end=True, metric_for_best_model="f1_micro", greater_is_better=True,
        max_grad_norm=hp.get("max_grad_norm", 1.0), logging_strategy="steps",
        logging_steps=max(1, steps_per_epoch // 5), seed=seed, data_seed=seed, bf16=env["compute_dtype"] == torch.bfloat16,
        use_cpu=not env["cuda"], report_to="none", disable_tqdm=True, dataloader_num_workers=0,
        train_sampling_strategy=throughput.sampling_strategy(hp))
    timer = eval_timer()
    weights = class_weights(splits["train"]["labels"], labels, multi, hp.get("class_weights", "none"))
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                      processing_class=tok, data_collator=DataCollatorWithPadding(tok),
                      compute_metrics=compute_metrics, optimizers=optimizers,
                      compute_loss_func=weighted_loss(weights, multi) if weights is not None else None,
                      callbacks=[EarlyStoppingCallback(early_stopping_patience=hp["patience"]), timer,
                                 finite_loss_guard(out_dir), trainer_progress()])
    trainer.remove_callback(PrinterCallback)  # trainer_progress prints each log event with step, total, time left
    if env["cuda"]:
        torch.cuda.reset_peak_memory_stats()
    last = resume_point(ckpt, run_key(model_json, data_dir, approach, rank, seed, hp))
    resumed_epochs = round(read_json(Path(last) / "trainer_state.json")["epoch"]) if last else 0
    if last:
        print(f"cell {out_dir}: resuming from {Path(last).name} (epoch {resumed_epochs} done)", flush=True)
    print(f"cell {out_dir}: {faults.describe(plan)}", flush=True)
    t0 = time.perf_counter()
    with faults.oom_retry(out_dir, "train", hp, plan):
        result = trainer.train(resume_from_checkpoint=last)
    wall = time.perf_counter() - t0
    history = trainer.state.log_history
    check_finite(history, out_dir)
    evals = [h for h in history if "eval_f1_micro" in h]
    best = max(evals, key=lambda h: h["eval_f1_micro"]) if evals else {}
    epochs_run = round(trainer.state.epoch or 0)
    train_seconds = wall - timer.eval_seconds
    extra = tuned_thresholds(hp, multi, labels, lambda: probabilities(trainer.predict(val_ds).predictions, True),
                             indicator(splits["val"]["labels"], labels))
    trained_here = epochs_run - resumed_epochs  # epochs this process trained (throughput)
    train_info = {
        "approach": approach, "rank": rank, "seed": seed, "trainable_params": int(trainable), "total_params": int(total),
        "epochs_run": epochs_run, "best_epoch": round(best.get("epoch", 0)), "best_val_f1_micro": best.get("eval_f1_micro"),
        "train_wall_seconds": wall, "eval_seconds_during_training": timer.eval_seconds,
        "train_loss": result.training_loss, "resumed_from": Path(last).name if last else None,
        "optimizer": optim, "class_weights": hp.get("class_weights", "none"), **extra,
        "micro_batch": plan["batch_size"], "grad_accum": plan["grad_accum"],
        "effective_batch": plan["batch_size"] * plan["grad_accum"], "val_batch_size": plan["eval_batch_size"],
        "n_train": len(train_ds), "n_val": len(val_ds),
        "device": env["device_name"], "dtype": str(env["compute_dtype"]).replace("torch.", ""),
        "quantization": "none" if approach == "encoder" else hp.get("quantization", "nf4"),
        "peak_memory_mb": peak_memory_mb(env),
        **prefixed("train_", text_coverage(tok, splits["train"]["text"], hp["max_length"])),
    }
    # Table 3 figures + tokens/s, padding, peak memory, model FLOPs / MFU (clsbench.throughput)
    train_info.update(throughput.write_train(
        out_dir, lengths=[len(ids) for ids in train_ds["input_ids"]], seconds=train_seconds, epochs=trained_here,
        plan=plan, hp=hp, env=env, peak_memory_mb=train_info["peak_memory_mb"], config=model.config,
        kind="train_full" if approach == "encoder" else "train_frozen", seed=seed))
    write_jsonl(out_dir / "train_log.jsonl", history)
    write_json(out_dir / "train_info.json", train_info)
    if approach == "encoder":
        with atomic_path(out_dir / "adapter", is_dir=True) as tmp:
            trainer.model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            if extra:
                write_json(tmp / THRESHOLDS_FILE, extra[THRESHOLDS])
            faults.write_sums(tmp)
    else:
        save_adapter(trainer.model, out_dir / "adapter", info, labels, multi, tok.pad_token_id,
                     thresholds=extra.get(THRESHOLDS))
    shutil.rmtree(ckpt, ignore_errors=True)  # outputs complete: nothing left to resume
    return train_info



def save_adapter(model, final: Path, info: dict, labels: list[str] | None, multi: bool, pad_token_id: int,
                 thresholds: dict | None = None) -> None:
    """Save adapter + head (peft) or the head alone (frozen), plus ``base/`` (classification config +
    links to the base weights and tokenizer) and the tuned per-label ``thresholds.json`` if any.
    ``labels=None``: a causal-LM adapter, whose ``base/`` links the base model's own config."""
    from safetensors.torch import save_file
    from transformers import AutoConfig

    final = Path(final)
    with atomic_path(final, is_dir=True) as tmp:
        if hasattr(model, "peft_config"):
            model.save_pretrained(tmp)
        else:
            save_file({n: p.detach().float().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad},
                      tmp / FROZEN_HEAD)
        base_src = local_dir(info)
        base = tmp / ADAPTER_BASE
        base.mkdir()
        for f in base_src.iterdir():
            if f.is_file() and (f.name != "config.json" or labels is None) and not f.name.startswith("."):
                os.symlink(os.path.relpath(f.resolve(), final / ADAPTER_BASE), base / f.name)
        if labels is not None:
            config = AutoConfig.from_pretrained(str(base_src), **classification_kwargs(labels, multi, pad_token_id))
            config.save_pretrained(base)
        cfg_path = tmp / "adapter_config.json"
        if cfg_path.exists():
            cfg = json.loads(cfg_path.read_text())
            cfg["base_model_name_or_path"] = str((final / ADAPTER_BASE).resolve())
            cfg_path.write_text(json.dumps(cfg, indent=2))
        if thresholds:
            write_json(tmp / THRESHOLDS_FILE, thresholds)
        faults.write_sums(tmp)


# ---------------------------------------------------------------- frozen ablation
def last_token_features(model, tok, texts: list[str], max_length: int, batch_size: int, device: str):
    """Input of the ``score`` head at the pooled (rightmost non-pad) token, for every text."""
    import torch

    captured = {}
    hook = model.score.register_forward_hook(lambda mod, args, out: captured.__setitem__("h", args[0]))
    enc = tok(texts, truncation=True, max_length=max_length)
    feats = []
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = tok.pad({k: enc[k][start:start + batch_size] for k in ("input_ids", "attention_mask")},
                                return_tensors="pt")
                ids = batch["input_ids"]
                model(**{k: v.to(device) for k, v in batch.items()})
                positions = torch.arange(ids.shape[1])
                last = (positions * (ids != model.config.pad_token_id)).argmax(-1)
                feats.append(captured["h"][torch.arange(len(ids)), last.to(captured["h"].device)].float().cpu())
    finally:
        hook.remove()
    return torch.cat(feats)


def train_frozen(model_json: str, data_dir: str, out_dir: str, seed: int, hp: dict, threads: int | None = None) -> dict:
    """The "LoRA is essential" ablation: only the ``score`` head learns, on the frozen (4-bit) LLM.

    The frozen base is deterministic (no dropout at eval), so each text's pooled hidden state is
    computed once and the head is trained on it with the head approach's settings (optimizer,
    linear schedule, batch size, early stopping on validation micro-F1, best epoch kept): the
    same model as training the head through the frozen LLM, without repeating its forward passes.
    """
    import torch
    from transformers import get_scheduler, set_seed

    env = device_setup(threads, hp.get("precision"))
    out_dir = Path(out_dir)
    info = read_json(model_json)
    splits, labels, multi = load_prepared(data_dir)
    tok = load_tokenizer(info["path"])
    set_seed(seed)
    model = load_classifier(info["path"], hp, env, **classification_kwargs(labels, multi, tok.pad_token_id)).eval()
    trainable, total = count_parameters(model)
    trainable = model.score.weight.numel()
    plan = faults.batch_plan(hp, out_dir, "train")  # features: the eval batch size (halved after out of memory)
    t0 = time.perf_counter()
    with faults.oom_retry(out_dir, "train", hp, plan):
        feats = {s: last_token_features(model, tok, list(splits[s]["text"]), hp["max_length"], plan["eval_batch_size"],
                                        env["device"]) for s in ("train", "val")}
    feature_seconds = time.perf_counter() - t0
    y = {s: torch.tensor(indicator(splits[s]["labels"], labels), dtype=torch.float32) for s in ("train", "val")}
    weight = torch.nn.Parameter(model.score.weight.detach().float().cpu().clone())
    lr = hp.get("head_learning_rate") or hp["learning_rate"]
    opt = torch.optim.AdamW([weight], lr=lr, weight_decay=hp.get("weight_decay", 0.0))
    batch = hp["batch_size"] * hp["grad_accum"]
    steps_per_epoch = math.ceil(len(feats["train"]) / batch)
    sched = get_scheduler(hp.get("lr_scheduler", "linear"), opt, num_warmup_steps=0,
                          num_training_steps=steps_per_epoch * hp["max_epochs"])
    weights = class_weights(splits["train"]["labels"], labels, multi, hp.get("class_weights", "none"))
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=weights) if multi else torch.nn.CrossEntropyLoss(weight=weights)
    gen = torch.Generator().manual_seed(seed)
    history, best, best_weight, waited = [], -1.0, weight.detach().clone(), 0
    t1 = time.perf_counter()
    for epoch in range(1, hp["max_epochs"] + 1):
        order = torch.randperm(len(feats["train"]), generator=gen)
        for step, start in enumerate(range(0, len(order), batch)):
            idx = order[start:start + batch]
            logits = feats["train"][idx] @ weight.T
            loss = loss_fn(logits, y["train"][idx] if multi else y["train"][idx].argmax(1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([weight], hp.get("max_grad_norm", 1.0))
            opt.step()
            sched.step()
            history.append({"loss": loss.item(), "learning_rate": sched.get_last_lr()[0],
                            "epoch": epoch - 1 + (step + 1) / steps_per_epoch})
        with torch.no_grad():
            val_logits = (feats["val"] @ weight.T).numpy()
        gold = y["val"].numpy() if multi else y["val"].numpy().argmax(1)
        f1 = micro_f1_from_logits(val_logits, gold, multi, fixed_threshold(hp))
        history.append({"eval_f1_micro": f1, "epoch": epoch})
        check_finite(history, out_dir)
        if f1 > best:
            best, best_weight, waited, best_epoch = f1, weight.detach().clone(), 0, epoch
        else:
            waited += 1
            if waited >= hp["patience"]:
                break
    head_seconds = time.perf_counter() - t1
    extra = tuned_thresholds(hp, multi, labels, lambda: probabilities((feats["val"] @ best_weight.T).numpy(), True),
                             y["val"].numpy())
    model.score.weight.data = best_weight.to(model.score.weight.device, model.score.weight.dtype)
    model.score.weight.requires_grad = True  # marks what save_adapter stores
    n_tokens = sum(map(len, tok(list(splits["train"]["text"]), truncation=True, max_length=hp["max_length"])["input_ids"]))
    train_info = {
        "approach": "frozen", "rank": 0, "seed": seed, "trainable_params": int(trainable), "total_params": int(total),
        "epochs_run": epoch, "best_epoch": best_epoch, "best_val_f1_micro": best,
        "train_wall_seconds": feature_seconds + head_seconds, "feature_seconds": feature_seconds,
        "train_samples_per_second": len(feats["train"]) * epoch / (feature_seconds + head_seconds),
        "train_tokens_per_second": n_tokens / feature_seconds,
        "n_train": len(feats["train"]), "n_val": len(feats["val"]), "device": env["device_name"],
        **prefixed("train_", text_coverage(tok, splits["train"]["text"], hp["max_length"])),
        "dtype": str(env["compute_dtype"]).replace("torch.", ""), "quantization": hp.get("quantization", "nf4"),
        "peak_memory_mb": peak_memory_mb(env), "class_weights": hp.get("class_weights", "none"), **extra,
    }
    write_jsonl(out_dir / "train_log.jsonl", history)
    write_json(out_dir / "train_info.json", train_info)
    for name, p in model.named_parameters():
        p.requires_grad = name == "score.weight"
    save_adapter(model, out_dir / "adapter", info, labels, multi, tok.pad_token_id, thresholds=extra.get(THRESHOLDS))
    return train_info


# ---------------------------------------------------------------- prediction
def predict_logits(model, tok, texts: list[str], max_length: int, batch_size: int,
                   device: str, progress=None) -> tuple[np.ndarray, list[int]]:
    """Logits for ``texts``, batched in order of length (least padding); returns (logits, token lengths).
    ``progress``: a :class:`clsbench.progress.Progress` told of each batch done."""
    import torch

    enc = tok(texts, truncation=True, max_length=max_length)
    order = np.argsort([len(ids) for ids in enc["input_ids"]])
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = tok.pad({"input_ids": [enc["input_ids"][i] for i in idx],
                             "attention_mask": [enc["attention_mask"][i] for i in idx]}, return_tensors="pt")
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            out[idx] = logits.float().cpu().numpy()
            if progress is not None:
                progress.update(len(idx))
    return out, [len(ids) for ids in enc["input_ids"]]


def load_trained(adapter_dir: str | Path, hp: dict, env: dict):
    """The trained classifier: base (quantised as in training) + adapter + head, base + head
    (frozen), or the fine-tuned encoder."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    base_dir = adapter_dir / ADAPTER_BASE
    if (adapter_dir / "adapter_config.json").exists():
        model = PeftModel.from_pretrained(load_classifier(base_dir, hp, env), str(adapter_dir))
    elif (adapter_dir / FROZEN_HEAD).exists():
        model = load_classifier(base_dir, hp, env)
        state = load_file(adapter_dir / FROZEN_HEAD)
        missing = set(state) - {n for n, _ in model.named_parameters()}
        if missing:
            raise UserError(f"{adapter_dir / FROZEN_HEAD}: weights {sorted(missing)} do not fit the base model")
        model.load_state_dict(state, strict=False)
    else:
        model = load_classifier(adapter_dir, {**hp, "quantization": "none"}, env, dtype=torch.float32)
        base_dir = adapter_dir
    model.eval()
    return model, load_tokenizer(base_dir)


def predict(adapter_dir: str, data_dir: str, out_dir: str, hp: dict, split: str = "test",
            threads: int | None = None) -> dict:
    """Write ``predictions.parquet`` (id, gold, probs, pred) and ``predict_info.json`` into ``out_dir``."""
    import torch

    env = device_setup(threads, hp.get("precision"))
    splits, labels, multi = load_prepared(data_dir)
    df = splits[split]
    out_dir = Path(out_dir)
    # a corrupted adapter is removed with what was computed from it (retrained by the next run), not used
    faults.check_sums(adapter_dir, derived=(out_dir / "predictions.parquet", out_dir / "metrics.json"))
    model, tok = load_trained(adapter_dir, hp, env)
    texts = list(df["text"])
    if hp.get("eval_batch_size") in faults.AUTO_BATCH:
        lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=hp["max_length"])["input_ids"]]
        hp = faults.resolve_eval_batch(hp, env, lambda subset, bs: predict_logits(
            model, tok, subset, hp["max_length"], bs, env["device"]), texts, lengths)
    plan = faults.batch_plan(hp, out_dir, "predict")  # halved after an out-of-memory failure
    bs = plan["eval_batch_size"]
    with faults.oom_retry(out_dir, "predict", hp, plan):
        warm = min(len(df), bs)
        predict_logits(model, tok, texts[:warm], hp["max_length"], bs, env["device"])  # warm-up
        if env["cuda"]:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        logits, lengths = predict_logits(model, tok, texts, hp["max_length"], bs, env["device"],
                                         Progress(f"predict {split}", len(texts)))
        if env["cuda"]:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    probs = probabilities(logits, multi)
    threshold = fixed_threshold(hp)
    if multi and hp.get("threshold") == "tuned":
        tuned = read_json(Path(adapter_dir) / THRESHOLDS_FILE)
        threshold = np.array([tuned[label] for label in labels])
    pred = decide(probs, multi, threshold)
    info = {"split": split, "n": len(df), "infer_wall_seconds": wall, "eval_batch_size": bs,
            "threshold": threshold.tolist() if isinstance(threshold, np.ndarray) else threshold,
            "device": env["device_name"], "peak_memory_mb": peak_memory_mb(env), "labels": labels, "multi_label": multi,
            **text_coverage(tok, texts, hp["max_length"])}
    info.update(throughput.write(out_dir, throughput.record(
        "infer", lengths=lengths, seconds=wall, batch_size=bs, order="sorted", env=env,
        peak_memory_mb=info["peak_memory_mb"], config=model.config, kind="forward")))
    write_predictions(out_dir, df, probs, pred, labels, info)
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
    t.add_argument("--approach", choices=APPROACHES, default="head")
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
        info = train(args.model_json, args.data_dir, args.out_dir, args.rank, args.seed, hp, args.threads, args.approach)
    else:
        info = predict(args.adapter_dir, args.data_dir, args.out_dir, hp, threads=args.threads)
    print(json.dumps(info, indent=2, default=str))


if __name__ == "__main__":
    run_cli(main)
