"""long_text: chunk for the head approaches: windows of max_length tokens with a stride, window
logits aggregated per text (mean single-label, max multi-label), at inference and optionally in
training; on the tiny random Llama with BBC articles (hundreds of tokens each)."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_FROZEN_HP, TINY_HEAD_HP, head_hparams

from clsbench import UserError, classifier, frozen, head, runtime
from clsbench.io import read_json
from clsbench.models import load_tokenizer

CHUNK = {"long_text": "chunk", "chunk_stride": 4, "max_length": 24}


@pytest.fixture(scope="module")
def tok(tiny_model):
    return load_tokenizer(read_json(tiny_model)["path"])


def test_windows_cover_every_token_with_the_stride_and_the_special_tokens(tok):
    text = " ".join(f"word{i}" for i in range(60))
    chunk = classifier.chunking(head_hparams(**CHUNK), multi_label=False)
    enc, text_of = classifier.encode(tok, [text, "short text"], 24, chunk)
    content = tok(text, add_special_tokens=False)["input_ids"]
    windows = [[i for i in ids if i not in tok.all_special_ids] for ids, t in zip(enc["input_ids"], text_of) if t == 0]
    assert all(ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id for ids in enc["input_ids"])
    assert len(windows) > 1 and all(len(ids) <= 24 for ids in enc["input_ids"])
    assert list(text_of).count(1) == 1  # a text within the limit is one window, as truncation reads it
    rebuilt = list(windows[0])
    for prev, nxt in zip(windows, windows[1:]):
        assert prev[-4:] == nxt[:4]  # neighbours share chunk_stride tokens
        rebuilt += nxt[4:]
    assert rebuilt == content  # nothing of the text is lost


def test_aggregate_means_or_maxes_the_windows_of_each_text():
    logits = np.array([[1.0, 0.0], [3.0, -2.0], [0.5, 0.5]])
    text_of = np.array([0, 0, 1])
    assert np.allclose(classifier.aggregate(logits, text_of, 2, "mean"), [[2.0, -1.0], [0.5, 0.5]])
    assert np.allclose(classifier.aggregate(logits, text_of, 2, "max"), [[3.0, 0.0], [0.5, 0.5]])
    assert classifier.chunking(head_hparams(max_length=64, long_text="chunk"), True) == {
        "stride": 16, "aggregate": "max", "training": False}
    assert classifier.chunking(head_hparams(max_length=64, long_text=None), False) is None  # truncate unless configured


def test_a_stride_that_would_not_advance_is_refused(tok):
    with pytest.raises(UserError, match="chunk_stride: 30 must be below max_length 24 minus the tokenizer's"):
        classifier.encode(tok, ["a text"], 24, {"stride": 30, "aggregate": "mean", "training": False})


@pytest.fixture(scope="module")
def truncated_cell(tmp_path_factory, tiny_model, bbc_small):
    out = tmp_path_factory.mktemp("cell")
    hp = {**TINY_HEAD_HP, "max_epochs": 1, "max_length": 24}
    head.train(str(tiny_model), str(bbc_small), str(out), rank=2, seed=1, hp=hp, threads=2)
    return out, hp


def test_chunked_prediction_reads_whole_texts_and_averages_window_logits(truncated_cell, bbc_small, tmp_path, tok):
    out, hp = truncated_cell
    info = head.predict(str(out / "adapter"), str(bbc_small), str(tmp_path), {**hp, **CHUNK}, threads=2)
    assert info["text_truncated_share"] == 0.0 and info["windows_per_text"] > 3 and info["long_text"] == "chunk"
    assert info["infer_windows_per_second"] > info["infer_samples_per_second"] > 0  # samples are texts
    probs = np.stack(pd.read_parquet(tmp_path / "predictions.parquet")["probs"])
    # by hand: every window of the first test text through the model alone, logits averaged
    model, _ = classifier.load_trained(out / "adapter", head_hparams(**hp), runtime.device_setup(2, "fp32"))
    text = pd.read_parquet(bbc_small / "test.parquet")["text"].iloc[0]
    enc, _ = classifier.encode(tok, [text], 24, classifier.chunking(head_hparams(**{**hp, **CHUNK}), False))
    with torch.inference_mode():
        rows = [model(input_ids=torch.tensor([ids])).logits[0].float().numpy() for ids in enc["input_ids"]]
    expected = classifier.probabilities(np.mean(rows, 0, keepdims=True), False)[0]
    assert np.allclose(probs[0], expected, atol=1e-4)


def test_chunk_training_trains_on_every_window_with_its_texts_labels(tmp_path, tiny_model, pairs_small):
    hp = {**TINY_HEAD_HP, "max_epochs": 1, **CHUNK, "chunk_training": True}
    info = head.train(str(tiny_model), str(pairs_small), str(tmp_path), rank=2, seed=1, hp=hp, threads=2)
    n_train = len(pd.read_parquet(pairs_small / "train.parquet"))
    assert info["n_train"] > 2 * n_train and info["chunk_training"] is True  # windows, not texts
    assert info["train_text_truncated_share"] == 0.0 and info["best_val_f1_micro"] is not None
    head.predict(str(tmp_path / "adapter"), str(pairs_small), str(tmp_path), hp, threads=2)
    assert json.loads((tmp_path / "predict_info.json").read_text())["windows_per_text"] > 2


def test_frozen_head_trains_on_windows_too(tmp_path, tiny_model, bbc_small):
    hp = {**TINY_FROZEN_HP, "max_epochs": 2, **CHUNK, "chunk_training": True}
    info = frozen.train(str(tiny_model), str(bbc_small), str(tmp_path), rank=0, seed=1, hp=hp, threads=2)
    assert info["n_train"] > 2 * len(pd.read_parquet(bbc_small / "train.parquet"))
    assert 0 <= info["best_val_f1_micro"] <= 1 and info["train_text_truncated_share"] == 0.0


def test_every_text_cut_by_the_limit_stops_unless_the_config_says_so(tmp_path, tiny_model, bbc_small):
    hp = {k: v for k, v in TINY_HEAD_HP.items() if k != "long_text"}
    with pytest.raises(UserError, match=r"dataset bbc-small: every training text is longer than max_length 48 tokens "
                                        r"\(mean 4\d read of each\); raise max_length, set long_text: chunk"):
        head.train(str(tiny_model), str(bbc_small), str(tmp_path), rank=2, seed=1, hp=hp, threads=2)
    assert not (tmp_path / "adapter").exists()
