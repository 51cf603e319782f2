"""Approach "head": QLoRA adapters + a classification head on the last token's hidden state (the
paper's Approach 1), trained with the HF ``Trainer`` (:func:`clsbench.classifier.fit`).

peft's SEQ_CLS task trains the classification layer (``score`` on decoders:
:func:`clsbench.classifier.head_modules`, as modules_to_save) beside LoRA. ``adapter/`` is a peft
checkpoint that loads with ``peft.AutoPeftModelForSequenceClassification.from_pretrained(adapter_dir)``
(its ``base/`` holds the classification config and links to the base weights and tokenizer)."""
from __future__ import annotations

from . import adapters, classifier


def build_model(info: dict, kwargs: dict, hp: dict, env: dict, rank: int):
    """The base with its classification layer (4-bit NF4 unless ``quantization: none``, the layer unquantised)
    and LoRA adapters."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    model = classifier.load_classifier(info["path"], hp, env, **kwargs)
    if hp.get("quantization", "nf4") != "none":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, classifier.lora_config(hp, rank, classifier.head_modules(model, hp)))


def save(model, final, tok, info: dict, kwargs: dict, thresholds: dict | None) -> None:
    adapters.save_adapter(model, final, info, base_config=kwargs, thresholds=thresholds)


def train(model_json: str, data_dir: str, out_dir: str, rank: int, seed: int, hp: dict,
          threads: int | None = None) -> dict:
    """Train one cell; writes ``adapter/``, ``train_log.jsonl`` and ``train_info.json`` into ``out_dir``."""
    return classifier.fit("head", model_json, data_dir, out_dir, rank, seed, hp, threads, build_model,
                          default_optimizer="adamw_bnb_8bit", kind="train_lora", save=save)
