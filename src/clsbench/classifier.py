"""What the approaches that put a classification head on a model share (head, frozen, encoder):
the model with its ``score`` head, tokenised splits, probabilities and decisions (per-label
thresholds tuned on validation, class weights), optimizer, the Trainer-based training of head and
encoder, and the predict step of all three.

``AutoModelForSequenceClassification`` on a causal LM pools the rightmost non-pad token into a
linear ``score`` layer. Single-label: softmax + cross-entropy; multi-label: sigmoid + BCE, threshold
at inference (0.5, or per label chosen on validation with ``threshold: tuned``).
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import UserError, adapters, batching, faults, runtime, staging, throughput, training
from .batching import AUTO_BATCH, resolve_eval_batch
from .data import load_prepared
from .hparams import REQUIRED, param
from .io import read_json, split_dir, write_predictions
from .losses import class_weights, weighted_loss
from .metrics import decide, indicator, label_lists
from .models import coverage_record, load_tokenizer, prefixed, text_coverage
from .progress import Progress
from .runtime import device_setup, peak_memory_mb, quantization_config
from .thresholds import THRESHOLDS, fixed_threshold, tuned_thresholds

THRESHOLD_SCHEMA = {"oneOf": [{"type": "number", "minimum": 0, "maximum": 1}, {"const": "tuned"}]}


@dataclass(frozen=True)
class ClassifierHparams:
    """A classification layer on a model (head, frozen, encoder): what it reads of a text, how it
    learns and decides. With :class:`clsbench.training.EpochHparams` in each approach's dataclass."""
    head_learning_rate: float | None = param(REQUIRED, "learning rate of the classification layer (null: "
                                             "learning_rate)", exclusiveMinimum=0)
    max_length: int = param(REQUIRED, "tokens of a text the model reads", minimum=8)
    long_text: str | None = param(None, "texts longer than max_length", ref="long_text")
    chunk_stride: int | None = param(None, "tokens two windows share", ref="chunk_stride")
    chunk_aggregate: str = param("auto", "how window logits become a text's", ref="chunk_aggregate")
    chunk_training: bool = param(False, "chunk also in training", ref="chunk_training")
    head_module: str | list[str] | None = param(None, "the classification layer(s)", ref="head_module")
    threshold: float | str = param(0.5, "multi-label decision threshold; tuned - one per label, chosen on the "
                                   "validation split for the best F1 (never on test)", schema=THRESHOLD_SCHEMA)
    class_weights: str = param("none", "balanced - cross-entropy class weights n / (classes x count), or BCE "
                               "pos_weight (negatives / positives) per label for multi-label",
                               choices=("none", "balanced"))
    min_labels: int = param(0, "multi-label: at least this many labels per text", ref="min_labels")

    @property
    def layer_learning_rate(self) -> float:
        """The classification layer's learning rate (``head_learning_rate``, else ``learning_rate``)."""
        return self.head_learning_rate or self.learning_rate


def classification_kwargs(labels: list[str], multi_label: bool, pad_token_id: int) -> dict:
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)}, "pad_token_id": pad_token_id,
            "problem_type": "multi_label_classification" if multi_label else "single_label_classification"}


def head_modules(model_or_path, given: str | list[str] | None = None) -> tuple[str, ...]:
    """The modules a ``*ForSequenceClassification`` model adds to its base model (``score`` on decoders,
    ``classifier`` on BERT-style encoders, ``pre_classifier`` + ``classifier`` on DistilBERT ...): the
    layers left unquantised, saved beside LoRA and given the head learning rate. ``given`` (the
    hyperparameter ``head_module``) names them where the model class cannot tell; else they are read
    off the model (a path is instantiated on the meta device: no weights are read)."""
    if given:
        return tuple(given) if isinstance(given, list | tuple) else (given,)
    model = model_or_path
    if isinstance(model, str | Path):
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification

        with torch.device("meta"):
            model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(str(model)))
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    found = tuple(name for name, child in model.named_children()
                  if name != model.base_model_prefix and any(True for _ in child.parameters()))
    if not found:
        raise UserError(f"{type(model).__name__}: no classification layer beside its base model; name it with the "
                        "hyperparameter head_module")
    return found


def load_classifier(path: str | Path, quant: runtime.QuantHparams | None, env: dict, dtype=None,
                    head_module: str | list[str] | None = None, **cls_kwargs):
    """The model with its classification layer(s), 4-bit as ``quant`` says (None: unquantised)."""
    from transformers import AutoModelForSequenceClassification

    quant = quantization_config(quant, env["compute_dtype"], keep=head_modules(path, head_module))
    kwargs = {"dtype": dtype or env["compute_dtype"], **cls_kwargs}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": 0} if env["cuda"] else {"": "cpu"}
    model = AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)
    if quant is None:
        model.to(env["device"])
    batching.simulate_oom(model)
    return model


# ---------------------------------------------------------------- data
def chunking(h: ClassifierHparams, multi_label: bool) -> dict | None:
    """``long_text: chunk`` settings (None for ``truncate``, the default): windows of ``max_length``
    tokens overlapping by ``chunk_stride`` (default a quarter of it), window logits aggregated per
    text by ``chunk_aggregate`` (``auto``: mean for single-label, max for multi-label: a label
    present in one part of a document is present in the document)."""
    mode = h.long_text or "truncate"
    if mode == "truncate":
        return None
    if mode != "chunk":
        raise UserError(f"hyperparameter long_text: {mode!r} is not one of truncate, chunk")
    how = h.chunk_aggregate
    return {"stride": h.max_length // 4 if h.chunk_stride is None else h.chunk_stride,
            "aggregate": ("max" if multi_label else "mean") if how == "auto" else how,
            "training": bool(h.chunk_training)}


def encode(tok, texts: list[str], max_length: int, chunk: dict | None = None) -> tuple[dict, np.ndarray]:
    """(input_ids / attention_mask, the text index of each row): one row per text cut to
    ``max_length`` tokens, or (``chunk``) one row per window of it, the tokenizer's own overflowing
    windows (each with the model's special tokens)."""
    if chunk is None:
        return tok(texts, truncation=True, max_length=max_length), np.arange(len(texts))
    specials = len(tok("")["input_ids"])
    if not getattr(tok, "is_fast", False):
        raise UserError(f"long_text chunk: tokenizer {tok.name_or_path} is not a fast tokenizer, which the "
                        "windows need; use long_text truncate")
    if chunk["stride"] >= max_length - specials:
        raise UserError(f"hyperparameter chunk_stride: {chunk['stride']} must be below max_length {max_length} "
                        f"minus the tokenizer's {specials} special tokens, or windows would not advance")
    enc = tok(texts, truncation=True, max_length=max_length, stride=chunk["stride"], return_overflowing_tokens=True)
    return enc, np.asarray(enc["overflow_to_sample_mapping"])


def check_limit(tok, texts, h: ClassifierHparams, dataset: str) -> None:
    """Stop when every training text is longer than the model limit and ``long_text`` is not set:
    truncation would cut each one, which is rarely what a config means (say ``long_text: truncate``
    to accept it)."""
    max_length = h.max_length
    if h.long_text is not None or not len(texts):
        return
    coverage_of = text_coverage(tok, texts, max_length)
    if coverage_of["text_truncated_share"] == 1.0:
        raise UserError(f"dataset {dataset}: every training text is longer than max_length {max_length} tokens "
                        f"(mean {coverage_of['text_tokens_mean']:.0f} read of each); raise max_length, set "
                        "long_text: chunk, cut the texts at preparation (max_words), or set long_text: truncate "
                        "to accept the cut")


def aggregate(logits: np.ndarray, text_of: np.ndarray, n_texts: int, how: str) -> np.ndarray:
    """Per-text logits from per-window ones (``text_of``: each window's text): their mean or max."""
    if how == "mean":
        out = np.zeros((n_texts, logits.shape[1]), dtype=np.float64)
        np.add.at(out, text_of, logits)
        return out / np.bincount(text_of, minlength=n_texts)[:, None]
    if how == "max":
        out = np.full((n_texts, logits.shape[1]), -np.inf)
        np.maximum.at(out, text_of, logits)
        return out
    raise UserError(f"hyperparameter chunk_aggregate: {how!r} is not one of auto, mean, max")


def tokenize_split(df: pd.DataFrame, tok, labels: list[str], multi_label: bool, max_length: int,
                   chunk: dict | None = None):
    """A `datasets.Dataset` with input_ids / attention_mask / labels (int or multi-hot float), and the
    text index of each row (``chunk``: one row per window, with its text's labels)."""
    from datasets import Dataset

    enc, text_of = encode(tok, list(df["text"]), max_length, chunk)
    y = indicator(df["labels"], labels)[text_of]
    target = y.astype(np.float32).tolist() if multi_label else y.argmax(1).tolist()
    data = Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": target})
    return data, text_of


def coverage(tok, texts, max_length: int, chunk: dict | None, text_of: np.ndarray | None = None) -> dict:
    """What a cell reads of its texts (:func:`clsbench.models.text_coverage`); chunked, every token
    of every text, in ``windows_per_text`` windows on average."""
    if chunk is None:
        return text_coverage(tok, texts, max_length)
    lengths = [len(ids) for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]
    if text_of is None:
        _, text_of = encode(tok, list(texts), max_length, chunk)
    return {**coverage_record(lengths, max(lengths)), "text_tokens_limit": None,
            "windows_per_text": len(text_of) / len(lengths)}


def probabilities(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    from scipy.special import expit, softmax

    logits = logits.astype(np.float64)
    return expit(logits) if multi_label else softmax(logits, axis=1)



def micro_f1_from_logits(logits: np.ndarray, y: np.ndarray, multi_label: bool, threshold: float) -> float:
    from sklearn.metrics import f1_score

    pred = decide(probabilities(logits, multi_label), multi_label, threshold)
    gold = y.astype(np.int8) if multi_label else np.eye(logits.shape[1], dtype=np.int8)[y]
    return float(f1_score(gold, pred, average="micro", zero_division=0))


def is_head_parameter(name: str, heads: tuple[str, ...]) -> bool:
    """Whether parameter ``name`` belongs to a classification layer of :func:`head_modules`, also as peft's
    ``modules_to_save`` copy."""
    return ".modules_to_save." in f".{name}." or any(f".{h}." in f".{name}." for h in heads)


def build_optimizer(model, h, steps: int, name: str, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
    """AdamW of the ``name`` variant (:data:`clsbench.runtime.OPTIMIZERS`) with a separate learning rate for
    the head; ``h``: a :class:`ClassifierHparams` with :class:`clsbench.training.TrainerHparams`."""
    import torch
    from transformers import get_scheduler

    head, body, heads = [], [], head_modules(model, h.head_module)
    for param_name, p in model.named_parameters():
        if p.requires_grad:
            (head if is_head_parameter(param_name, heads) else body).append(p)
    groups = [{"params": body, "lr": h.learning_rate}, {"params": head, "lr": h.layer_learning_rate}]
    groups = [g for g in groups if g["params"]]
    if name == "adamw_torch":
        opt = torch.optim.AdamW(groups, betas=betas, eps=eps, weight_decay=h.weight_decay)
    else:
        import bitsandbytes as bnb

        cls = {"adamw_bnb_8bit": bnb.optim.AdamW8bit, "paged_adamw_32bit": bnb.optim.PagedAdamW32bit,
               "paged_adamw_8bit": bnb.optim.PagedAdamW8bit}[name]
        opt = cls(groups, betas=betas, eps=eps, weight_decay=h.weight_decay)
    sched = get_scheduler(h.lr_scheduler, opt, num_warmup_steps=math.ceil(h.warmup_ratio * steps),
                          num_training_steps=steps)
    return opt, sched

# ---------------------------------------------------------------- training (head, encoder)
def fit(approach: str, model_json: str, data_dir: str, out_dir: str, rank: int, seed: int, h,
        threads: int | None, build_model, kind: str, save, predict_after=None,
        stop_after_epochs: int | None = None) -> dict:
    """Train one cell with the HF ``Trainer`` through :mod:`clsbench.training`; ``h``: the approach's
    typed hyperparameters (:class:`ClassifierHparams` and :class:`clsbench.training.TrainerHparams`).
    ``build_model(info, kwargs, h, env, rank)``: the model to train (``kwargs``: its classification
    config); ``save(model, final, tok, info, kwargs, thresholds)``: write ``adapter/``; ``kind``: the
    throughput record's training kind (``train_lora`` or ``train_full``); ``predict_after``: a
    :class:`clsbench.staging.Stager`, given the trained model's predictions; ``stop_after_epochs``: a
    tuning trial's rung (:func:`clsbench.training.rung_stop`)."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed

    training.check_trainer_args(h, TrainingArguments, f"approaches.{approach}.hparams", own_optimizer=True)
    env = device_setup(threads, h.precision)
    out_dir = Path(out_dir)
    info = read_json(model_json)
    splits, labels, multi = load_prepared(data_dir)
    tok = load_tokenizer(info["path"])
    threshold = fixed_threshold(h.threshold)
    set_seed(seed)
    check_limit(tok, list(splits["train"]["text"]), h, Path(data_dir).name)
    kwargs = classification_kwargs(labels, multi, tok.pad_token_id)
    model = build_model(info, kwargs, h, env, rank)
    trainable, total = runtime.count_parameters(model)
    chunk = chunking(h, multi)
    fit_chunk = chunk if chunk and chunk["training"] else None  # else only the test predictions are chunked
    train_ds, _ = tokenize_split(splits["train"], tok, labels, multi, h.max_length, fit_chunk)
    val_ds, val_text_of = tokenize_split(splits["val"], tok, labels, multi, h.max_length, fit_chunk)
    val_gold = indicator(splits["val"]["labels"], labels)
    plan = training.plan(h, out_dir)
    optim = runtime.optimizer_name(h.optimizer, env)

    def val_logits(logits):  # per validation text (windows aggregated)
        return aggregate(logits, val_text_of, len(val_gold), fit_chunk["aggregate"]) if fit_chunk else logits

    def compute_metrics(pred):
        gold = val_gold if multi else val_gold.argmax(1)
        return {"f1_micro": micro_f1_from_logits(val_logits(pred.predictions), gold, multi, threshold)}

    args = training.arguments(TrainingArguments, h, plan, env, seed, out_dir, len(train_ds), optim)
    optimizers = build_optimizer(model, h, training.steps_per_epoch(h, len(train_ds)) * h.max_epochs, optim,
                                 betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    timer = runtime.eval_timer()
    weights = class_weights(splits["train"]["labels"], labels, multi, h.class_weights)
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds,
                      processing_class=tok, data_collator=DataCollatorWithPadding(tok),
                      compute_metrics=compute_metrics, optimizers=optimizers,
                      compute_loss_func=weighted_loss(weights, multi) if weights is not None else None,
                      callbacks=training.callbacks(h, out_dir, timer, stop_after_epochs))
    # Both losses (the model's sequence-classification loss, weighted_loss) are means over the
    # micro-batch and ignore the Trainer's num_items_in_batch: the Trainer must divide them by the
    # accumulation steps, or gradient accumulation sums the gradients (grad_accum x the loss and norm).
    trainer.loss_is_scaled_for_ga = False
    key = runtime.run_key(model_json, data_dir, approach, rank, seed, dataclasses.asdict(h))
    train_info = {"approach": approach, "rank": rank, "seed": seed, "trainable_params": int(trainable),
                  "total_params": int(total), **training.run(trainer, out_dir, plan, h, env, key, timer)}
    extra = tuned_thresholds(h.threshold, multi, labels,
                             lambda: probabilities(val_logits(trainer.predict(val_ds).predictions), True), val_gold)
    if isinstance(h, adapters.LoraHparams):  # the LoRA update scale alpha / r (rank comparisons: grid.for_rank)
        from .dropout import resolve

        train_info.update(lora_alpha=h.lora_alpha, lora_scale=h.lora_alpha / rank,
                          lora_dropout_rng=resolve(h.lora_dropout_rng, env["cuda"]))
    train_info.update(optimizer=optim, class_weights=h.class_weights, **extra, quantization=quantization_of(h),
                      long_text=h.long_text or "truncate", chunk_training=bool(fit_chunk),
                      **prefixed("train_", coverage(tok, splits["train"]["text"], h.max_length, fit_chunk)))
    training.finish(out_dir, train_info, trainer, h, env, plan, seed, kind,
                    lambda final: save(trainer.model, final, tok, info, kwargs, extra.get(THRESHOLDS)))
    if predict_after is not None:  # as load_trained loads it: an LLM's in the compute dtype, an encoder in float32
        import torch

        model = staging.inference_form(
            trainer.model, env["compute_dtype"] if isinstance(h, runtime.QuantHparams) else torch.float32, h, env)
        predict_after(lambda folder, splits: predict_with(model, tok, out_dir / "adapter", data_dir, folder, h, env,
                                                          splits))
    return train_info


# ---------------------------------------------------------------- prediction
def predict_logits(model, tok, texts: list[str], max_length: int, batch_size: int,
                   device: str, progress=None, chunk: dict | None = None,
                   encoded: tuple[dict, np.ndarray] | None = None) -> tuple[np.ndarray, list[int]]:
    """Logits for ``texts``, batched in order of length (least padding); returns (logits, token
    lengths of the rows run). ``chunk`` (:func:`chunking`): every window of each text runs and the
    logits are aggregated per text. ``progress``: a :class:`clsbench.progress.Progress` told of each
    batch done (in rows). ``encoded``: :func:`encode`'s result for these texts, if the caller has it."""
    import torch

    enc, text_of = encoded or encode(tok, texts, max_length, chunk)
    order = np.argsort([len(ids) for ids in enc["input_ids"]])
    out = np.zeros((len(text_of), model.config.num_labels), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = tok.pad({"input_ids": [enc["input_ids"][i] for i in idx],
                             "attention_mask": [enc["attention_mask"][i] for i in idx]}, return_tensors="pt")
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            out[idx] = logits.float().cpu().numpy()
            if progress is not None:
                progress.update(len(idx))
    lengths = [len(ids) for ids in enc["input_ids"]]
    return (out if chunk is None else aggregate(out, text_of, len(texts), chunk["aggregate"])), lengths


def quantization_of(h) -> str:
    """How the base model is stored: ``h.quantization``, or none for an approach without 4-bit settings (encoder)."""
    return h.quantization if isinstance(h, runtime.QuantHparams) else "none"


def load_trained(adapter_dir: str | Path, h: ClassifierHparams, env: dict):
    """The trained classifier: base (quantised as in training) + adapter + head, base + head
    (frozen), or the fine-tuned encoder."""
    import torch
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    base_dir = adapter_dir / adapters.ADAPTER_BASE
    if adapters.is_peft(adapter_dir):
        model = adapters.load_peft(adapter_dir, lambda path: load_classifier(path, h, env, head_module=h.head_module))
    elif (adapter_dir / adapters.FROZEN_HEAD).exists():
        model = load_classifier(base_dir, h, env, head_module=h.head_module)
        state = load_file(adapter_dir / adapters.FROZEN_HEAD)
        missing = set(state) - {n for n, _ in model.named_parameters()}
        if missing:
            raise UserError(f"{adapter_dir / adapters.FROZEN_HEAD}: weights {sorted(missing)} do not fit the base model")
        model.load_state_dict(state, strict=False)
    else:
        model = load_classifier(adapter_dir, None, env, dtype=torch.float32, head_module=h.head_module)
        base_dir = adapter_dir
    model.eval()
    runtime.inference_weights(model, h, env)
    return model, load_tokenizer(base_dir)


def predict(adapter_dir: str, data_dir: str, out_dir: str, h: ClassifierHparams, threads: int | None = None,
            splits: tuple[str, ...] = ("test",)) -> dict:
    """Write ``predictions.parquet`` (id, gold, probs, pred) and ``predict_info.json`` of each split
    (:func:`clsbench.io.split_dir`: the test split's into ``out_dir``, the validation split's into
    ``out_dir/val``) with one model load; returns the first split's info."""
    env = device_setup(threads, h.precision)
    # a corrupted adapter is removed with what was computed from it (retrained by the next run), not used
    faults.check_sums(adapter_dir, derived=tuple(split_dir(out_dir, s) / name for s in splits
                                                 for name in ("predictions.parquet", "metrics.json")))
    return predict_with(*load_trained(adapter_dir, h, env), adapter_dir, data_dir, out_dir, h, env, splits)


def predict_with(model, tok, adapter_dir, data_dir, out_dir, h: ClassifierHparams, env: dict, splits) -> dict:
    """:func:`predict` with the model in memory (loaded, or the training job's: :mod:`clsbench.staging`)."""
    import torch

    loaded, labels, multi = load_prepared(data_dir)
    out_dir = Path(out_dir)
    chunk = chunking(h, multi)
    if h.eval_batch_size in AUTO_BATCH:
        texts = list(loaded[splits[0]]["text"])
        lengths = [len(ids) for ids in tok(texts, truncation=True, max_length=h.max_length)["input_ids"]]
        h = resolve_eval_batch(h, env, lambda subset, bs: predict_logits(
            model, tok, subset, h.max_length, bs, env["device"]), texts, lengths)
    plan = batching.batch_plan(h, out_dir, "predict")  # halved after an out-of-memory failure
    bs = plan["eval_batch_size"]
    threshold = fixed_threshold(h.threshold)
    if multi and h.threshold == "tuned":
        tuned = read_json(Path(adapter_dir) / adapters.THRESHOLDS_FILE)
        threshold = np.array([tuned[label] for label in labels])
    infos = []
    for split in splits:
        df = loaded[split]
        texts = list(df["text"])
        with batching.oom_retry(out_dir, "predict", h, plan):
            if not infos:  # warm-up (not timed), once per job
                predict_logits(model, tok, texts[:min(len(df), bs)], h.max_length, bs, env["device"])
            if env["cuda"]:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            encoded = encode(tok, texts, h.max_length, chunk)  # once: the progress total and the run
            t0 = time.perf_counter()
            logits, lengths = predict_logits(model, tok, texts, h.max_length, bs, env["device"],
                                             Progress(f"predict {split}", len(encoded[1])), chunk, encoded)
            if env["cuda"]:
                torch.cuda.synchronize()
            wall = time.perf_counter() - t0
        probs = probabilities(logits, multi)
        pred = decide(probs, multi, threshold, h.min_labels)
        info = {"split": split, "n": len(df), "infer_wall_seconds": wall, "eval_batch_size": bs,
                "threshold": threshold.tolist() if isinstance(threshold, np.ndarray) else threshold,
                "device": env["device_name"], "inference_weights": runtime.inference_weights_of(model),
                "peak_memory_mb": peak_memory_mb(env), "labels": labels,
                "multi_label": multi, "long_text": h.long_text or "truncate",
                **coverage(tok, texts, h.max_length, chunk, encoded[1])}
        record = throughput.record("infer", lengths=lengths, seconds=wall, batch_size=bs, order="sorted", env=env,
                                   peak_memory_mb=info["peak_memory_mb"], config=model.config, kind="forward")
        if chunk is not None:  # samples are texts; the rows run were their windows
            record["infer_windows_per_second"] = record["infer_samples_per_second"]
            record["infer_samples_per_second"] = len(texts) / wall if wall > 0 else None
        info.update(throughput.write(split_dir(out_dir, split), record))
        write_predictions(split_dir(out_dir, split), df, probs, label_lists(pred, labels), info)
        infos.append(info)
    return infos[0]
