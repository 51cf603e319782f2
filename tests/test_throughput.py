"""Throughput records: the FLOPs formula, padding, MFU and the paper-settings preset against hand
computations; the benchmark script end to end (--quick) on a tiny architecture."""
import json
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, TINY_LLAMA

from clsbench import approaches, grid, throughput


def test_model_flops_by_hand():
    # N = 1000 non-embedding parameters, two sequences of 3 and 7 tokens, 2 layers, attention width 8:
    # ΣT = 10, ΣT² = 9 + 49 = 58
    args = dict(n_params=1000, lengths=[3, 7], n_layers=2, attn_dim=8)
    assert throughput.model_flops(kind="forward", **args) == 2 * 1000 * 10 + 4 * 2 * 8 * 58 == 23712
    assert throughput.model_flops(kind="train_lora", **args) == 4 * 1000 * 10 + 12 * 2 * 8 * 58 == 51136
    assert throughput.model_flops(kind="train_full", **args) == 6 * 1000 * 10 + 12 * 2 * 8 * 58 == 71136


def test_shape_of_tiny_llama_by_hand():
    from transformers import AutoConfig

    config = AutoConfig.for_model(**TINY_LLAMA, vocab_size=100)
    s = throughput.shape(config)
    # per layer: q 64x64, k and v 64x32 (2 of 4 heads of 16), o 64x64, gate/up/down 3 x 64x128, two norms;
    # plus the final norm; embeddings excluded
    per_layer = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128 + 2 * 64
    assert s == throughput.Shape(n_params=2 * per_layer + 64, n_layers=2, attn_dim=64)


def test_padding_fraction_and_batch_orders():
    assert throughput.padding_fraction([[3, 1], [2, 2]]) == pytest.approx(1 - 8 / 10)
    assert throughput.padding_fraction([[5]]) == 0.0 and throughput.padding_fraction([]) == 0.0
    lengths = [5, 100, 7, 90]
    assert throughput.batches(lengths, 2, "sequential") == [[5, 100], [7, 90]]
    assert throughput.batches(lengths, 2, "sorted") == [[5, 7], [90, 100]]
    for order in ("random", "group_by_length"):
        groups = throughput.batches(lengths, 2, order, seed=1)
        assert sorted(sum(groups, [])) == sorted(lengths) and all(len(g) == 2 for g in groups)
    with pytest.raises(ValueError):
        throughput.batches(lengths, 2, "shortest-first")


def test_peak_flops_and_mfu():
    assert throughput.peak_flops("NVIDIA L4") == 121e12
    assert throughput.peak_flops("NVIDIA L40S") == 362e12  # not the L4's
    assert throughput.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert throughput.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert throughput.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert throughput.peak_flops("cpu (2 threads)") is None and throughput.peak_flops("NVIDIA A10G") is None
    assert throughput.mfu(121e12, 2.0, "NVIDIA L4") == pytest.approx(0.5)
    assert throughput.mfu(121e12, 2.0, "cpu (2 threads)") is None


def test_record_and_write_merge_stages(tmp_path):
    from transformers import AutoConfig

    config = AutoConfig.for_model(**TINY_LLAMA, vocab_size=100)
    env = {"device_name": "NVIDIA L4", "compute_dtype": "torch.bfloat16"}
    train = throughput.record("train", lengths=[3, 1, 2, 2], seconds=2.0, batch_size=2, order="sequential", env=env,
                              peak_memory_mb=10.0, config=config, kind="train_lora", repeats=3, grad_accum=4)
    assert train["train_samples_per_second"] == 3 * 4 / 2.0 and train["train_tokens_per_second"] == 3 * 8 / 2.0
    assert train["train_padding_fraction"] == pytest.approx(0.2) and train["train_grad_accum"] == 4
    s = throughput.shape(config)
    flops = 3 * throughput.model_flops(s.n_params, [3, 1, 2, 2], "train_lora", s.n_layers, s.attn_dim)
    assert train["train_model_tflop"] == pytest.approx(flops / 1e12)
    assert train["train_mfu"] == pytest.approx(flops / 2.0 / 121e12)
    assert train["dtype"] == "bfloat16" and train["device"] == "NVIDIA L4"
    infer = throughput.record("infer", lengths=[4], seconds=1.0, batch_size=4, order="sorted",
                              env={"device_name": "cpu (2 threads)"})
    assert infer["infer_mfu"] is None and infer["infer_model_tflop"] is None
    assert throughput.write(tmp_path, train) == train
    throughput.write(tmp_path, infer)
    merged = json.loads((tmp_path / "throughput.json").read_text())
    assert merged["train_samples_per_second"] == 6.0 and merged["infer_samples_per_second"] == 1.0
    generate = throughput.restage(infer, "infer", "infer_generate")
    assert generate["infer_generate_samples_per_second"] == 1.0 and generate["device"] == "cpu (2 threads)"
    assert "infer_samples_per_second" not in generate


def test_sampling_strategy():
    assert throughput.sampling_strategy(True) == "group_by_length"
    assert throughput.sampling_strategy(False) == "random"


def test_paper_settings_preset_overlays_the_default_grid():
    """configs/paper_settings.yaml deep-merged onto config.yaml (as `snakemake --configfile config.yaml
    configs/paper_settings.yaml` does) is a valid grid with the paper's batch settings and the grid's
    other hyperparameters."""
    from snakemake.utils import update_config, validate

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    default = {a: grid.hparams(config, a, b["models"][0]) for a, b in config["approaches"].items() if b.get("models")}
    update_config(config, yaml.safe_load((REPO / "configs" / "paper_settings.yaml").read_text()))
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    for approach, settings in throughput.PAPER_SETTINGS.items():
        if approach not in config["approaches"]:
            continue
        hp = grid.hparams(config, approach, config["approaches"][approach]["models"][0])
        assert {k: hp[k] for k in settings} == settings
        text = "text_tokens" if approaches.get(approach).generative else "max_length"
        assert hp[text] == default[approach][text]  # only the batch settings change
    assert grid.cells(config) == grid.cells(yaml.safe_load((REPO / "config.yaml").read_text()))


@pytest.mark.e2e
def test_benchmark_quick_writes_csv(tmp_path):
    arch = tmp_path / "tiny-llama.json"
    arch.write_text(json.dumps(TINY_LLAMA))
    out = tmp_path / "throughput.csv"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "throughput.py"), "--quick", "--inline",
                          "--archs", str(arch), "--n-train", "8", "--n-test", "8", "--threads", "1", "--max-length", "32",
                          "--work", str(tmp_path / "work"), "--out", str(out)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    import pandas as pd

    table = pd.read_csv(out)
    assert set(zip(table["approach"], table["settings"], table["infer_mode"])) == {
        ("head", "paper", "classifier"), ("head", "ours", "classifier"), ("instruct", "paper", "generate"),
        ("instruct", "ours", "score"), ("instruct", "ours", "generate")}
    assert (table["train_samples_per_second"] > 0).all() and (table["infer_samples_per_second"] > 0).all()
    paper = table[table["settings"] == "paper"]
    assert (paper["train_batch_size"] == 1).all() and (paper["train_ours_over_paper"] == 1).all()
    assert set(table.loc[table["settings"] == "ours", "train_order"]) == {"group_by_length"}
    assert "train sps" in run.stdout


def test_throughput_table_shows_tokens_memory_and_the_paper_beside_ours():
    import pandas as pd

    from clsbench import tables

    base = {"dataset": "clv", "seed": 42, "mode": "classifier", "train_samples_per_second": 22.74,
            "infer_samples_per_second": 9.08, "device": "NVIDIA L4", "dtype": "bfloat16"}
    df = pd.DataFrame([{**base, "model": "llama-3-2-1b", "approach": "head", "rank": 8, "train_tokens_per_second": 900.0,
                        "infer_tokens_per_second": 4000.0, "peak_memory_mb": 5000.0},
                       {**base, "model": "gemma-3-270m", "approach": "zeroshot", "rank": 0, "mode": "score",
                        "train_samples_per_second": None, "infer_tokens_per_second": 300.0,
                        "peak_memory_mb": 800.0}])
    for col in tables.THROUGHPUT_EXTRA:
        df[col] = df.get(col)
    table = tables.throughput_table(df, {"clv": "CLV"})
    head = table.iloc[0]
    assert head["paper_train_samples_per_second"] == 11.37 and head["train_over_paper"] == pytest.approx(2.0)
    assert head["paper_infer_samples_per_second"] == 4.54 and head["infer_over_paper"] == pytest.approx(2.0)
    assert head["train_tokens_per_second"] == 900 and head["train_peak_memory_mb"] == 5000
    assert table["infer_tokens_per_second"].tolist() == [4000, 300]  # instruct/zeroshot: prompt tokens
    assert pd.isna(table.iloc[1]["train_peak_memory_mb"])  # no training: its peak is the inference's
    assert "train_mfu" not in table  # no cell recorded it
    assert list(table.columns[-2:]) == ["device", "dtype"] and set(table["dtype"]) == {"bfloat16"}
