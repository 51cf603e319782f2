"""Approach "frozen": the head approach's classification head on the frozen (4-bit) LLM, no LoRA: the
paper's "LoRA is essential" ablation. ``adapter/`` holds the head (``score.safetensors``, whatever the
layer's name: :func:`clsbench.classifier.head_modules`) beside
``base/`` (:mod:`clsbench.adapters`); predictions come from :func:`clsbench.classifier.predict`."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import UserError, adapters, batching, classifier, staging
from .classifier import (
    ClassifierHparams,
    aggregate,
    check_limit,
    chunking,
    classification_kwargs,
    coverage,
    encode,
    head_modules,
    load_classifier,
    micro_f1_from_logits,
    probabilities,
)
from .data import load_prepared
from .health import training_flags
from .hparams import REQUIRED, redefault, typed
from .io import read_json, write_jsonl, write_train_record
from .losses import class_weights
from .metrics import indicator
from .models import load_tokenizer, prefixed
from .runtime import (
    QuantHparams,
    check_finite,
    count_parameters,
    device_setup,
    inference_weights,
    inference_weights_of,
    peak_memory_mb,
)
from .thresholds import THRESHOLDS, fixed_threshold, tuned_thresholds
from .training import EpochHparams

WHERE = "approaches.frozen.hparams"


@dataclass(frozen=True)
class FrozenHparams(ClassifierHparams, EpochHparams, QuantHparams):
    """The head's settings without LoRA and the Trainer: the layer trains with plain AdamW on features
    computed once, with the configured schedule and no warmup (an epoch costs milliseconds)."""
    quantization: str = redefault(QuantHparams, "quantization", REQUIRED)
    grad_accum: int = redefault(EpochHparams, "grad_accum", REQUIRED)


def last_token_features(model, tok, texts: list[str], max_length: int, batch_size: int, device: str,
                        chunk: dict | None = None, layer=None):
    """Input of the classification layer (``layer``, default the model's :func:`linear_head`) at the pooled (rightmost non-pad) token of every text, or (``chunk``)
    of every window of it; returns (features, the text index of each row)."""
    import torch

    captured = {}
    layer = layer if layer is not None else linear_head(model)[1]
    hook = layer.register_forward_hook(lambda mod, args, out: captured.__setitem__("h", args[0]))
    enc, text_of = encode(tok, texts, max_length, chunk)
    feats = []
    try:
        with torch.inference_mode():
            for start in range(0, len(text_of), batch_size):
                batch = tok.pad({k: enc[k][start:start + batch_size] for k in ("input_ids", "attention_mask")},
                                return_tensors="pt")
                ids = batch["input_ids"]
                model(**{k: v.to(device) for k, v in batch.items()})
                positions = torch.arange(ids.shape[1])
                last = (positions * (ids != model.config.pad_token_id)).argmax(-1)
                feats.append(captured["h"][torch.arange(len(ids)), last.to(captured["h"].device)].float().cpu())
    finally:
        hook.remove()
    return torch.cat(feats), text_of


def linear_head(model, head_module: str | list[str] | None = None):
    """(name, layer): the one bias-free linear classification layer the ablation trains on frozen features."""
    import torch

    heads = head_modules(model, head_module)
    layer = model.get_submodule(heads[-1])
    if len(heads) > 1 or not isinstance(layer, torch.nn.Linear) or layer.bias is not None:
        raise UserError(f"approach frozen trains one bias-free linear layer on the pooled hidden state; "
                        f"{type(model).__name__} classifies with {', '.join(heads)}: use the head approach for it")
    return heads[-1], layer


def train(model_json: str, data_dir: str, out_dir: str, rank: int, seed: int, hp: dict,
          threads: int | None = None, predict_after=None, stop_after_epochs: int | None = None) -> dict:
    """The "LoRA is essential" ablation: only the classification layer learns, on the frozen (4-bit) LLM.

    The frozen base is deterministic (no dropout at eval), so each text's pooled hidden state is
    computed once and the head is trained on it with the head approach's settings (optimizer,
    linear schedule, batch size, early stopping on validation micro-F1, best epoch kept): the
    same model as training the head through the frozen LLM, without repeating its forward passes.
    A tuning trial's rung (``stop_after_epochs``) ends the loop early and keeps no checkpoint: the cell
    that continues the trial trains it again, which costs seconds.
    """
    import torch
    from transformers import get_scheduler, set_seed

    h = typed(FrozenHparams, hp, WHERE)
    env = device_setup(threads, h.precision)
    out_dir = Path(out_dir)
    info = read_json(model_json)
    splits, labels, multi = load_prepared(data_dir)
    tok = load_tokenizer(info["path"])
    check_limit(tok, list(splits["train"]["text"]), h, Path(data_dir).name)
    set_seed(seed)
    model = load_classifier(info["path"], h, env, head_module=h.head_module,
                            **classification_kwargs(labels, multi, tok.pad_token_id)).eval()
    inference_weights(model, h, env)  # the features are a prediction of the frozen base
    head, layer = linear_head(model, h.head_module)
    trainable, total = count_parameters(model)
    trainable = layer.weight.numel()
    plan = batching.batch_plan(h, out_dir, "train")  # features: the eval batch size (halved after out of memory)
    chunk = chunking(h, multi)
    fit_chunk = chunk if chunk and chunk["training"] else None  # else only the test predictions are chunked
    t0 = time.perf_counter()
    with batching.oom_retry(out_dir, "train", h, plan):
        feats, text_of = {}, {}
        for s in ("train", "val"):
            feats[s], text_of[s] = last_token_features(model, tok, list(splits[s]["text"]), h.max_length,
                                                       plan["eval_batch_size"], env["device"], fit_chunk, layer)
    feature_seconds = time.perf_counter() - t0
    val_gold = indicator(splits["val"]["labels"], labels)
    y = {"train": torch.tensor(indicator(splits["train"]["labels"], labels)[text_of["train"]], dtype=torch.float32)}

    def val_logits(w) -> np.ndarray:  # per validation text (windows aggregated)
        with torch.no_grad():
            logits = (feats["val"] @ w.T).numpy()
        return aggregate(logits, text_of["val"], len(val_gold), fit_chunk["aggregate"]) if fit_chunk else logits

    weight = torch.nn.Parameter(layer.weight.detach().float().cpu().clone())
    opt = torch.optim.AdamW([weight], lr=h.layer_learning_rate, weight_decay=h.weight_decay)
    batch = h.batch_size * h.grad_accum
    steps_per_epoch = math.ceil(len(feats["train"]) / batch)
    sched = get_scheduler(h.lr_scheduler, opt, num_warmup_steps=0, num_training_steps=steps_per_epoch * h.max_epochs)
    weights = class_weights(splits["train"]["labels"], labels, multi, h.class_weights)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=weights) if multi else torch.nn.CrossEntropyLoss(weight=weights)
    gen = torch.Generator().manual_seed(seed)
    history, best, best_weight, waited = [], -1.0, weight.detach().clone(), 0
    t1 = time.perf_counter()
    last_epoch = min(stop_after_epochs or h.max_epochs, h.max_epochs)  # a tuning trial's rung: the schedule stays
    for epoch in range(1, last_epoch + 1):
        order = torch.randperm(len(feats["train"]), generator=gen)
        for step, start in enumerate(range(0, len(order), batch)):
            idx = order[start:start + batch]
            logits = feats["train"][idx] @ weight.T
            loss = loss_fn(logits, y["train"][idx] if multi else y["train"][idx].argmax(1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([weight], h.max_grad_norm)
            opt.step()
            sched.step()
            history.append({"loss": loss.item(), "learning_rate": sched.get_last_lr()[0],
                            "epoch": epoch - 1 + (step + 1) / steps_per_epoch})
        gold = val_gold if multi else val_gold.argmax(1)
        f1 = micro_f1_from_logits(val_logits(weight), gold, multi, fixed_threshold(h.threshold))
        history.append({"eval_f1_micro": f1, "epoch": epoch})
        check_finite(history, out_dir)
        if f1 > best:
            best, best_weight, waited, best_epoch = f1, weight.detach().clone(), 0, epoch
        else:
            waited += 1
            if waited >= h.patience:
                break
    at_rung = epoch == last_epoch < h.max_epochs and waited < h.patience
    head_seconds = time.perf_counter() - t1
    extra = tuned_thresholds(h.threshold, multi, labels, lambda: probabilities(val_logits(best_weight), True), val_gold)
    layer.weight.data = best_weight.to(layer.weight.device, layer.weight.dtype)
    n_tokens = sum(map(len, encode(tok, list(splits["train"]["text"]), h.max_length, fit_chunk)[0]["input_ids"]))
    train_info = {
        "approach": "frozen", "rank": 0, "seed": seed, "trainable_params": int(trainable), "total_params": int(total),
        "epochs_run": epoch, "best_epoch": best_epoch, "best_val_f1_micro": best, "stopped_at_rung": at_rung,
        "undertrained": bool(training_flags({"epochs_run": epoch, "best_epoch": best_epoch,
                                             "stopped_at_rung": at_rung})),
        "train_wall_seconds": feature_seconds + head_seconds, "feature_seconds": feature_seconds,
        "train_samples_per_second": len(feats["train"]) * epoch / (feature_seconds + head_seconds),
        "train_tokens_per_second": n_tokens / feature_seconds,
        "n_train": len(feats["train"]), "n_val": len(feats["val"]), "device": env["device_name"],
        "long_text": h.long_text or "truncate", "chunk_training": bool(fit_chunk),
        **prefixed("train_", coverage(tok, splits["train"]["text"], h.max_length, fit_chunk)),
        "dtype": str(env["compute_dtype"]).replace("torch.", ""), "quantization": h.quantization,
        "feature_weights": inference_weights_of(model),
        "peak_memory_mb": peak_memory_mb(env), "class_weights": h.class_weights, **extra,
    }
    write_jsonl(out_dir / "train_log.jsonl", history)
    write_train_record(out_dir, train_info)
    for name, p in model.named_parameters():
        p.requires_grad = name == f"{head}.weight"  # marks what save_adapter stores
    adapters.save_adapter(model, out_dir / "adapter", info, base_config=classification_kwargs(labels, multi, tok.pad_token_id),
                          thresholds=extra.get(THRESHOLDS))
    if predict_after is not None:  # the base and head as predict loads them (clsbench.staging)
        model = staging.inference_form(model, env["compute_dtype"], h, env)
        predict_after(lambda folder, splits: classifier.predict_with(model, tok, out_dir / "adapter", data_dir, folder,
                                                                     h, env, splits))
    return train_info


def predict(adapter_dir: str, data_dir: str, out_dir: str, hp: dict, threads: int | None = None,
            splits: tuple[str, ...] = ("test",)) -> dict:
    """The cell's predictions of each split (:func:`clsbench.classifier.predict`)."""
    return classifier.predict(adapter_dir, data_dir, out_dir, typed(FrozenHparams, hp, WHERE), threads, splits)
