"""Approaches that ask a causal LM for the label in words (the paper's Approach 2):

instruct  QLoRA instruction tuning on prompt -> answer pairs (Appendix B prompts through
          :mod:`clsbench.prompting`, TRL ``SFTTrainer`` on a prompt/completion dataset, answer-only
          loss by default), early stopping on validation micro-F1 in score mode.
zeroshot  the same prompts and inference on the untrained model (the paper's "headless prompting");
fewshot   with solved training examples before the text.

Inference (:mod:`clsbench.scoring`) has two modes, each cached in the cell folder:
score     class or label probabilities without free text
          -> ``predictions.parquet`` (id, gold, probs, pred), ``predict_info.json``
generate  greedy answers parsed by :mod:`clsbench.prompts`, invalid ones scored as wrong
          -> ``predictions_generate.parquet`` (+ generated, valid), ``predict_info_generate.json``
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import adapters, batching, faults, layout, prefix, runtime, staging, throughput, training
from .adapters import LoraHparams
from .batching import resolve_eval_batch
from .data import load_prepared
from .hparams import REQUIRED, param, redefault, typed
from .io import read_json, split_dir, write_predictions, write_train_record
from .metrics import decide, indicator
from .models import load_tokenizer, prefixed
from .progress import Progress
from .prompting import Encoder, PromptHparams, few_shot_examples, few_shot_shortfall
from .scoring import MODES, label_probability, run_mode
from .training import TrainerHparams


@dataclass(frozen=True)
class InstructHparams(PromptHparams, TrainerHparams, LoraHparams):
    """Paper Table 1, column "Instruction Fine-Tuning", where config.yaml does not say otherwise."""
    weight_decay: float = redefault(TrainerHparams, "weight_decay", 0.01)
    max_grad_norm: float = redefault(TrainerHparams, "max_grad_norm", 0.3)
    lr_scheduler: str = redefault(TrainerHparams, "lr_scheduler", "cosine")
    warmup_ratio: float = redefault(TrainerHparams, "warmup_ratio", 0.03)
    optimizer: str = redefault(TrainerHparams, "optimizer", "paged_adamw_32bit")
    grad_accum: int = redefault(TrainerHparams, "grad_accum", REQUIRED)
    lora_alpha: float = redefault(LoraHparams, "lora_alpha", REQUIRED)
    target_modules: list[str] | str = redefault(LoraHparams, "target_modules", "all-linear")
    gradient_checkpointing: bool = param(REQUIRED, "recompute activations in the backward pass (non-reentrant)")
    loss: str = param("answer_only", "answer_only: the loss on the answer tokens; full_sequence: on the prompt too",
                      choices=("answer_only", "full_sequence"))
    share_prompt_prefix: bool = param(
        True, "training runs the prompt prefix every row of a batch shares (instruction and allowed labels) once per "
        "batch instead of once per row: the same loss and gradients, the prefix's LoRA dropout mask drawn once per "
        "batch (clsbench.prefix); not with gradient checkpointing", fill=False)


@dataclass(frozen=True)
class FewshotHparams(PromptHparams):
    shots: int = param(1, "solved training examples per label (drawn with the cell's seed)", minimum=1)
    shot_tokens: int = param(64, "tokens of each example's text", minimum=1)


# zero- and few-shot cells take instruct's settings (grid.fill_shipped_defaults); those they do not use
UNUSED_BY_PROMPTING = tuple(f.name for f in dataclasses.fields(InstructHparams)
                            if f.name not in {g.name for g in dataclasses.fields(PromptHparams)})


def load_lm(path: str | Path, h: PromptHparams, env: dict):
    """The causal LM, 4-bit NF4 (lm_head kept in full precision) unless ``quantization: none``."""
    from transformers import AutoModelForCausalLM

    quant = runtime.quantization_config(h, env["compute_dtype"], keep=("lm_head",))
    kwargs = {"dtype": env["compute_dtype"]}
    if quant is not None:
        kwargs.update(quantization_config=quant, device_map={"": 0} if env["cuda"] else {"": "cpu"})
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if quant is None:
        model.to(env["device"])
    contiguous_lm_head_input(model)
    batching.simulate_oom(model)
    return model


def contiguous_lm_head_input(model) -> None:
    """Hand the LM head a contiguous input. transformers slices the positions to project
    (``logits_to_keep=1``: ``hidden[:, -1:, :]``, a strided view) before the LM head, and torch's
    CPU ``linear`` on a strided 3-D input falls back to a batched matmul that copies the whole
    (vocabulary × hidden) weight for every row of the batch: with Gemma's 262k-token vocabulary
    that dominates the prompt pass of scoring and the prefill of generation (docs/throughput.md
    has the measured figures)."""
    model.get_output_embeddings().register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))


def _score_answer_positions_only() -> None:
    """TRL's fused LM head projects only the positions that carry a loss when Triton is at hand;
    elsewhere it projects every position (to keep tile shapes fixed for compiling backends such as
    Neuron). On a CPU that makes the LM head of a 262k-token vocabulary (Gemma) cost several times
    the rest of the step, for positions whose loss is masked anyway. Same loss, same gradients."""
    import trl.trainer.utils as trl_utils

    if hasattr(trl_utils, "_use_triton"):
        trl_utils._use_triton = lambda device: True


def val_micro_f1(model, enc: Encoder, rows: list[list[int]], gold: np.ndarray, h: InstructHparams, batch_size: int,
                 device: str) -> float:
    """Validation micro-F1 of the model being trained, in score mode (no free text: the same
    decision rule as the test predictions, and no invalid answers to tell apart from learning)."""
    from sklearn.metrics import f1_score

    was_training = model.training
    model.eval()
    try:
        probs, _, _ = run_mode("score", model, enc, rows, dataclasses.replace(h, eval_batch_size=batch_size),
                               {"device": device})
    finally:
        model.train(was_training)
    pred = decide(probs, enc.multi, h.threshold, h.min_labels)
    return float(f1_score(gold, pred, average="micro", zero_division=0))


def _scored_sft_trainer():
    """TRL's SFTTrainer whose evaluation is validation micro-F1 (score mode) instead of the token
    loss, so early stopping and the best epoch restored follow the rule of the head and encoder
    cells (``metric_for_best_model="f1_micro"``, resumable through the trainer state), and that
    runs the prompt prefix a training batch shares once (``share_prefix``: :mod:`clsbench.prefix`).

    It also keeps the trained LoRA weights in float32, as the head cells keep theirs: SFTTrainer
    casts a quantised model's trainable weights to bf16 whatever precision is asked, so an fp32
    cell trained bf16 adapters with bf16 matmuls (emulated, several times slower, on CPUs without
    AVX512-BF16) and bf16 optimizer updates, unlike every other approach."""
    import torch
    from trl import SFTTrainer

    class ScoredSFTTrainer(SFTTrainer):
        def __init__(self, *args, val_f1, share_prefix: bool, **kwargs):
            super().__init__(*args, **kwargs)
            self.val_f1, self.share_prefix, self.prefix_tokens = val_f1, share_prefix, []
            for weight in self.model.parameters():
                if weight.requires_grad and weight.dtype != torch.float32:
                    weight.data = weight.data.float()

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.share_prefix and model.training:
                inputs, length = prefix.split_batch(model, inputs)
                self.prefix_tokens.append(length)
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            t0 = time.perf_counter()
            metrics = {f"{metric_key_prefix}_f1_micro": self.val_f1(self.model),
                       f"{metric_key_prefix}_runtime": time.perf_counter() - t0}
            self.log(metrics)
            self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    return ScoredSFTTrainer


def train(model_json: str, data_dir: str, out_dir: str, rank: int, seed: int, hp: dict,
          threads: int | None = None, predict_after=None, stop_after_epochs: int | None = None) -> dict:
    """Instruction-tune one cell; writes ``adapter/``, ``train_log.jsonl``, ``train_info.json``;
    ``predict_after``: a :class:`clsbench.staging.Stager`, given the trained model's predictions;
    ``stop_after_epochs``: a tuning trial's rung (:func:`clsbench.training.rung_stop`)."""
    from peft import TaskType, get_peft_model, prepare_model_for_kbit_training
    from transformers import set_seed
    from trl import SFTConfig

    from . import dropout

    h = typed(InstructHparams, hp, "approaches.instruct.hparams")
    training.check_trainer_args(h, SFTConfig, "approaches.instruct.hparams")
    ScoredSFTTrainer = _scored_sft_trainer()
    env = runtime.device_setup(threads, h.precision)
    if not env["cuda"]:
        _score_answer_positions_only()
    out_dir = Path(out_dir)
    info = read_json(model_json)
    splits, labels, multi = load_prepared(data_dir)
    tok = load_tokenizer(info["path"])
    tok.padding_side = "right"
    enc = Encoder(tok, labels, multi, h, train_labels=splits["train"]["labels"])
    set_seed(seed)
    model = load_lm(info["path"], h, env)
    runtime.cpu_inference_kernel(model, False)  # the base stays as loaded through evaluation and checkpoints
    enc.check_fits(model.config)
    if h.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=h.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, h.lora_config(TaskType.CAUSAL_LM, rank))  # "all-linear" excludes lm_head
    runtime.frozen_weights_to(model, env["compute_dtype"])
    dropout_rng = dropout.use_for_lora(model, dropout.resolve(h.lora_dropout_rng, env["cuda"]))
    trainable, total = runtime.count_parameters(model)
    train_ds, val_ds = enc.training_examples(splits["train"]), enc.training_examples(splits["val"])

    optim = runtime.optimizer_name(h.optimizer, env)
    plan = training.plan(h, out_dir)
    args = training.arguments(
        SFTConfig, h, plan, env, seed, out_dir, len(train_ds), optim,
        activation_checkpointing=False,  # set up by peft above (TRL's default would switch it on)
        completion_only_loss=h.loss == "answer_only", max_length=None)
    timer = runtime.eval_timer()
    val_rows = [enc.prompt_ids(text) for text in splits["val"]["text"]]
    val_gold = indicator(splits["val"]["labels"], labels)
    trainer = ScoredSFTTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, processing_class=tok,
        callbacks=training.callbacks(h, out_dir, timer, stop_after_epochs),
        val_f1=lambda m: val_micro_f1(m, enc, val_rows, val_gold, h, plan["eval_batch_size"], env["device"]),
        share_prefix=h.share_prompt_prefix and not h.gradient_checkpointing)
    trained_dtypes = sorted({str(p.dtype).replace("torch.", "") for p in trainer.model.parameters() if p.requires_grad})
    key = runtime.run_key(model_json, data_dir, "instruct", rank, seed, dataclasses.asdict(h))
    train_info = {"approach": "instruct", "rank": rank, "seed": seed, "trainable_params": int(trainable),
                  "total_params": int(total), **training.run(trainer, out_dir, plan, h, env, key, timer)}
    train_info.update({
        "lora_alpha": h.lora_alpha, "lora_scale": h.lora_alpha / rank, "lora_dropout_rng": dropout_rng,
        "loss": h.loss, "optimizer": optim,
        "trained_dtype": ",".join(trained_dtypes), "gradient_checkpointing": h.gradient_checkpointing,
        "mean_shared_prefix_tokens": float(np.mean(trainer.prefix_tokens)) if trainer.prefix_tokens else 0.0,
        "mean_prompt_tokens": float(np.mean([sum(1 - m for m in mask) for mask in train_ds["completion_mask"]])),
        "quantization": h.quantization, "prompt_max_length": enc.max_length,
        **prefixed("train_", enc.coverage(splits["train"]["text"]))})
    training.finish(out_dir, train_info, trainer, h, env, plan, seed, "train_lora",
                    lambda final: adapters.save_adapter(trainer.model, final, info))
    if predict_after is not None:  # the model and tokenizer as load_for_inference loads them
        model = staging.inference_form(trainer.model, env["compute_dtype"], h, env)
        tok.padding_side = "left"
        predict_after(lambda folder, splits: prompt_splits(model, tok, data_dir, folder, h, env, splits))
    return train_info


def load_for_inference(source: str | Path, h: PromptHparams, env: dict):
    """(model, tokenizer): an instruct cell's ``adapter/`` on its 4-bit base, or a base model (zero-shot)."""

    source = Path(source)
    if adapters.is_peft(source):
        base = source / adapters.ADAPTER_BASE
        model = adapters.load_peft(source, lambda path: load_lm(path, h, env))
    else:
        base = source
        model = load_lm(base, h, env)
    tok = load_tokenizer(base)
    tok.padding_side = "left"
    model.eval()
    runtime.inference_weights(model, h, env)
    return model, tok


def predict(source: str, data_dir: str, out_dir: str, hp: dict, threads: int | None = None,
            splits: tuple[str, ...] = ("test",), modes: tuple[str, ...] = MODES) -> dict:
    """Approach "instruct": the trained cell's predictions (:func:`run_prompts`)."""
    h = typed(InstructHparams, hp, "approaches.instruct.hparams")
    return run_prompts(source, data_dir, out_dir, h, threads, splits, modes)


def run_prompts(source: str, data_dir: str, out_dir: str, h: PromptHparams, threads: int | None = None,
                splits: tuple[str, ...] = ("test",), modes: tuple[str, ...] = MODES, untrained: dict | None = None,
                examples=None) -> dict:
    """Run the inference modes over each split with one model load; write each split's predictions
    and info (see module docstring) into :func:`clsbench.io.split_dir`. The test split gets every
    mode of ``modes``, another split (validation, what best.json is chosen on) the first only.
    ``source``: the cell's ``adapter/`` (instruct) or the model's folder (prompting an untrained
    model: ``untrained`` is then the cell's train_info.json record, written here as the cell has no
    training step); ``examples``: solved (text, labels) pairs shown before each text (few-shot).
    Returns the first split's infos by mode."""
    env = runtime.device_setup(threads, h.precision)
    if adapters.is_peft(source):  # a corrupted adapter is removed with what came from it
        faults.check_sums(source, derived=tuple(split_dir(out_dir, s) / layout.mode_file(stem, mode, ext) for s in splits
                                                for mode in MODES
                                                for stem, ext in (("predictions", "parquet"), ("metrics", "json"))))
    return prompt_splits(*load_for_inference(source, h, env), data_dir, out_dir, h, env, splits, modes, untrained,
                         examples)


def prompt_splits(model, tok, data_dir: str, out_dir: str, h: PromptHparams, env: dict,
                  splits: tuple[str, ...] = ("test",), modes: tuple[str, ...] = MODES, untrained: dict | None = None,
                  examples=None) -> dict:
    """:func:`run_prompts` with the model in memory (loaded, or the training job's: :mod:`clsbench.staging`)."""
    import torch

    loaded, labels, multi = load_prepared(data_dir)
    out_dir = Path(out_dir)
    enc = Encoder(tok, labels, multi, h, train_labels=loaded["train"]["labels"], examples=examples)
    enc.check_fits(model.config)
    rows, encode_seconds = {}, {}
    for split in splits:
        t0 = time.perf_counter()
        rows[split] = [enc.prompt_ids(text) for text in loaded[split]["text"]]
        encode_seconds[split] = time.perf_counter() - t0
    modes_of = {split: modes if split == "test" else modes[:1] for split in splits}
    first = rows[splits[0]]
    configured = resolve_eval_batch(h, env, lambda subset, bs: [
        run_mode(m, model, enc, subset, dataclasses.replace(h, eval_batch_size=bs), env) for m in modes_of[splits[0]]],
        first, [len(r) for r in first])
    plan = batching.batch_plan(configured, out_dir, "predict")  # halved after an out-of-memory failure
    h = dataclasses.replace(configured, eval_batch_size=plan["eval_batch_size"])
    warm, by_split = set(), {}
    for split in splits:
        df, split_rows = loaded[split], rows[split]
        lengths = [len(r) for r in split_rows]
        infos = by_split[split] = {}
        for mode in modes_of[split]:
            with batching.oom_retry(out_dir, "predict", configured, plan):
                if mode not in warm:  # warm-up, not timed: once per mode and job
                    run_mode(mode, model, enc, split_rows[:h.eval_batch_size], h, env)
                    warm.add(mode)
                if env["cuda"]:
                    torch.cuda.reset_peak_memory_stats()
                progress = Progress(f"predict {split} ({mode})", len(split_rows))
                (probs, pred, texts), wall = runtime.timed(
                    lambda mode=mode, progress=progress, split_rows=split_rows: run_mode(
                        mode, model, enc, split_rows, h, env, progress), env)
            peak = runtime.peak_memory_mb(env)
            rec = throughput.record("infer", lengths=lengths, seconds=wall, batch_size=h.eval_batch_size,
                                    order="sorted", env=env, peak_memory_mb=peak, config=model.config, kind="forward")
            throughput.write(split_dir(out_dir, split), throughput.restage(rec, "infer", f"infer_{mode}"))
            infos[mode] = write_predictions(split_dir(out_dir, split), df, probs, pred, {
                "split": split, "mode": mode, "n": len(df), "infer_wall_seconds": wall,
                "mean_prompt_tokens": sum(lengths) / len(df), "prompt_encode_seconds": encode_seconds[split],
                "eval_batch_size": h.eval_batch_size, "device": env["device_name"],
                "inference_weights": runtime.inference_weights_of(model), "peak_memory_mb": peak, "labels": labels,
                "multi_label": multi,
                **({"label_probability": label_probability(enc)} if multi and mode == "score" else {}),
                "prompt_max_length": enc.max_length, **enc.coverage(df["text"]), **rec}, mode, texts)
    if untrained is not None and "test" in splits:  # no training step: record what the evaluation expects of a cell
        trainable, total = runtime.count_parameters(model)
        write_train_record(out_dir, {**untrained, "rank": 0, "trainable_params": 0, "total_params": int(total),
                                     "epochs_run": 0, "quantization": h.quantization, "prompt_max_length": enc.max_length})
    return by_split[splits[0]]


def predict_zeroshot(model_dir: str, data_dir: str, out_dir: str, hp: dict, threads: int | None = None,
                     splits: tuple[str, ...] = ("test",), modes: tuple[str, ...] = MODES, seed: int = 0) -> dict:
    """Approach "zeroshot": the instruct prompts on the untrained model (the paper's headless prompting;
    deterministic: ``seed`` is only recorded)."""
    h = typed(PromptHparams, hp, "approaches.zeroshot.hparams", ignore=UNUSED_BY_PROMPTING)
    return run_prompts(model_dir, data_dir, out_dir, h, threads, splits, modes,
                       untrained={"approach": "zeroshot", "seed": seed})


def predict_fewshot(model_dir: str, data_dir: str, out_dir: str, hp: dict, seed: int, threads: int | None = None,
                    splits: tuple[str, ...] = ("test",), modes: tuple[str, ...] = MODES) -> dict:
    """Approach "fewshot": the instruct prompts with ``shots`` solved training examples per label
    (drawn with ``seed``, :func:`few_shot_examples`) before the text, on the untrained model."""
    h = typed(FewshotHparams, hp, "approaches.fewshot.hparams", ignore=UNUSED_BY_PROMPTING)
    loaded, labels, _ = load_prepared(data_dir)
    examples = few_shot_examples(loaded["train"], labels, h.shots, seed)
    short = few_shot_shortfall(examples, labels, h.shots)
    if short:
        print(f"cell {out_dir}: NOTICE: shots {h.shots} per label, but the training split has fewer examples of "
              f"{short}; the prompt shows {len(examples)} examples in all (lower shots, or add examples)", flush=True)
    record = {"approach": "fewshot", "seed": seed, "shots": h.shots, "examples": len(examples),
              "example_ids": [ident for ident, _, _ in examples], "labels_short_of_shots": short}
    return run_prompts(model_dir, data_dir, out_dir, h, threads, splits, modes, untrained=record,
                   examples=[(text, gold) for _, text, gold in examples])
