"""The registry of approaches: what the grid, the rules, the tables, the plots and the claims need to
know of each. Nothing else in the package or the workflow spells out an approach's name; adding an
approach is a module with its entry points, an entry here and its block in the config schema.

Entry points (``"module:function"`` under ``clsbench``, run by ``python -m clsbench.cell``):
  train(model_json, data_dir, out_dir, rank, seed, hp, threads) -> train_info
      for ``stages == "train"``: writes adapter/, train_log.jsonl, train_info.json
  predict(source, data_dir, out_dir, hp, seed, threads, splits) -> predict_info
      ``source``: the cell's adapter/ (stages "train") or the model's folder (stages "predict",
      which also writes train_info.json: the cell has no training step); ``splits``: the splits
      predicted with one model load (test into the cell folder, val into <cell>/val: best.json)
  fit(data_dir, out_dir, seed, hp[, model_json, threads]) -> train_info
      for ``stages == "fit"``: one job that fits a scikit-learn pipeline (clsbench.fitted) and predicts test
      and val; ``model_json`` for approaches that use a model of ``models:`` (embed, setfit; TF-IDF uses
      none: ``model_slug``); its predict entry takes the cell folder as ``source`` (new texts: clsbench.apply)
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from . import UserError

CLASSIFIER_MODES = ("classifier",)
PROMPT_MODES = ("score", "generate")  # cached as predictions.parquet and predictions_generate.parquet


@dataclass(frozen=True)
class Approach:
    name: str
    title: str  # tables and plots
    colour: str  # bubble plots
    stages: str  # "train" (a train job, then a predict job), "predict" (no training), "fit" (one job)
    train: str | None = None  # entry points, "module:function"
    predict: str | None = None
    fit: str | None = None
    ranked: bool = False  # its cells take a LoRA rank (the others are written r0)
    model_slug: str | None = None  # model-free approaches: the model slug of their cells
    modes: tuple[str, ...] = CLASSIFIER_MODES  # inference modes; the first is metrics.json's
    model_bound: bool = False  # compared with the reference approach's cells of the same model only
    deterministic: bool = False  # one seed stands for all (its result does not depend on the seed)
    settings_from: tuple[str, ...] = ()  # approaches whose hparams it takes where its own block is silent
    hparams: str | None = None  # its typed hyperparameters, "module:Dataclass" (clsbench.hparams)

    @property
    def generative(self) -> bool:
        """Has a second inference mode (free generation: predictions_generate.parquet)."""
        return "generate" in self.modes

    @property
    def epoch_trained(self) -> bool:
        """Trains over epochs in a train job (writes train_log.jsonl: the training curves)."""
        return self.stages == "train"

    @property
    def hparams_class(self):
        """The dataclass of its typed hyperparameters, or None (the approach reads a dict)."""
        if self.hparams is None:
            return None
        module, name = self.hparams.split(":")
        return getattr(importlib.import_module(f"clsbench.{module}"), name)

    def entry(self, stage: str):
        """The function of ``stage`` (train, predict or fit)."""
        target = getattr(self, stage)
        if target is None:
            raise UserError(f"approach '{self.name}' has no {stage} step (its stages: {self.stages})")
        module, function = target.split(":")
        return getattr(importlib.import_module(f"clsbench.{module}"), function)


REFERENCE = "head"  # the approach the others are compared with (the paired table)
BASELINE = "tfidf"  # the floor every table measures against (delta vs TF-IDF, bubble plots' line)
REGISTRY = {a.name: a for a in (
    Approach("head", "Classification head", "#1f77b4", "train", train="head:train", predict="head:predict",
             ranked=True, hparams="head:HeadHparams"),
    Approach("frozen", "Frozen LLM + head (no LoRA)", "#9ecae1", "train", train="frozen:train",
             predict="frozen:predict", model_bound=True, hparams="frozen:FrozenHparams"),
    Approach("instruct", "Instruction tuning", "#ff7f0e", "train", train="instruct:train", predict="instruct:predict",
             ranked=True, modes=PROMPT_MODES, model_bound=True, hparams="instruct:InstructHparams"),
    Approach("zeroshot", "Zero-shot prompting", "#fdd0a2", "predict", predict="instruct:predict_zeroshot",
             modes=PROMPT_MODES, model_bound=True, deterministic=True, settings_from=("instruct",),
             hparams="prompting:PromptHparams"),
    Approach("fewshot", "Few-shot prompting", "#d62728", "predict", predict="instruct:predict_fewshot",
             modes=PROMPT_MODES, model_bound=True, settings_from=("instruct", "zeroshot"),
             hparams="instruct:FewshotHparams"),
    Approach("encoder", "Encoder (full fine-tuning)", "#2ca02c", "train", train="encoder:train",
             predict="encoder:predict", hparams="encoder:EncoderHparams"),
    Approach("embed", "Sentence embeddings + logistic regression", "#8c564b", "fit", fit="embed:fit",
             predict="embed:predict", deterministic=True, hparams="embed:EmbedHparams"),
    Approach("setfit", "SetFit (contrastive encoder + head)", "#e377c2", "fit", fit="contrastive:fit",
             predict="contrastive:predict", hparams="contrastive:SetFitHparams"),
    Approach("tfidf", "TF-IDF + logistic regression", "#7f7f7f", "fit", fit="tfidf:fit", predict="tfidf:predict",
             model_slug="tfidf", deterministic=True, hparams="tfidf:TfidfHparams"),
)}
NAMES = tuple(REGISTRY)  # table order


def get(name: str) -> Approach:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown approach '{name}' (known: {list(NAMES)})") from None


def names(**attrs) -> list[str]:
    """Approaches whose attributes have the given values, e.g. ``names(stages="train")``."""
    return [a.name for a in REGISTRY.values() if all(getattr(a, k) == v for k, v in attrs.items())]


def pattern(**attrs) -> str:
    """A wildcard constraint (``head|frozen|...``) for the approaches of :func:`names`."""
    return "|".join(names(**attrs))
