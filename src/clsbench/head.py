"""Approach "head": QLoRA adapters + a classification head on the last token's hidden state (the
paper's Approach 1), trained with the HF ``Trainer`` (:func:`clsbench.classifier.fit`).

peft's SEQ_CLS task trains the classification layer (``score`` on decoders:
:func:`clsbench.classifier.head_modules`, as modules_to_save) beside LoRA. ``adapter/`` is a peft
checkpoint that loads with ``peft.AutoPeftModelForSequenceClassification.from_pretrained(adapter_dir)``
(its ``base/`` holds the classification config and links to the base weights and tokenizer)."""
from __future__ import annotations

from dataclasses import dataclass

from . import adapters, classifier, runtime
from .adapters import LoraHparams
from .hparams import REQUIRED, redefault, typed
from .runtime import QuantHparams
from .training import TrainerHparams

WHERE = "approaches.head.hparams"


@dataclass(frozen=True)
class HeadHparams(classifier.ClassifierHparams, TrainerHparams, LoraHparams, QuantHparams):
    """Paper Table 1, column "Decoder Tuning", where config.yaml does not say otherwise."""
    quantization: str = redefault(QuantHparams, "quantization", REQUIRED)
    grad_accum: int = redefault(TrainerHparams, "grad_accum", REQUIRED)
    optimizer: str = redefault(TrainerHparams, "optimizer", "adamw_bnb_8bit")


def build_model(info: dict, kwargs: dict, h: HeadHparams, env: dict, rank: int):
    """The base with its classification layer (4-bit NF4 unless ``quantization: none``, the layer unquantised)
    and LoRA adapters."""
    from peft import TaskType, get_peft_model, prepare_model_for_kbit_training

    from . import dropout

    model = classifier.load_classifier(info["path"], h, env, head_module=h.head_module, **kwargs)
    runtime.cpu_inference_kernel(model, False)  # the base stays as loaded through evaluation and checkpoints
    if h.quantization != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    heads = classifier.head_modules(model, h.head_module)
    model = get_peft_model(model, h.lora_config(TaskType.SEQ_CLS, rank, modules_to_save=list(heads)))
    dropout.use_for_lora(model, dropout.resolve(h.lora_dropout_rng, env["cuda"]))
    runtime.frozen_weights_to(model, env["compute_dtype"])
    return model


def save(model, final, tok, info: dict, kwargs: dict, thresholds: dict | None) -> None:
    adapters.save_adapter(model, final, info, base_config=kwargs, thresholds=thresholds)


def train(model_json: str, data_dir: str, out_dir: str, rank: int, seed: int, hp: dict,
          threads: int | None = None, predict_after=None, stop_after_epochs: int | None = None) -> dict:
    """Train one cell; writes ``adapter/``, ``train_log.jsonl`` and ``train_info.json`` into ``out_dir``."""
    return classifier.fit("head", model_json, data_dir, out_dir, rank, seed, typed(HeadHparams, hp, WHERE), threads,
                          build_model, kind="train_lora", save=save,
                          predict_after=predict_after, stop_after_epochs=stop_after_epochs)


def predict(adapter_dir: str, data_dir: str, out_dir: str, hp: dict, threads: int | None = None,
            splits: tuple[str, ...] = ("test",)) -> dict:
    """The cell's predictions of each split (:func:`clsbench.classifier.predict`)."""
    return classifier.predict(adapter_dir, data_dir, out_dir, typed(HeadHparams, hp, WHERE), threads, splits)
