"""The registry of approaches (clsbench.approaches) agrees with the config schema, the modules and
the rules, and the few-shot approach (added through it) draws and shows its examples as documented."""
import re
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import REPO

from clsbench import UserError, approaches, cell, prompting, prompts


def test_every_approach_has_a_schema_block_and_importable_entry_points():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    assert set(schema["properties"]["approaches"]["properties"]) == set(approaches.NAMES)
    for approach in approaches.REGISTRY.values():
        stages = {"train": ("train", "predict"), "predict": ("predict",), "fit": ("fit",)}[approach.stages]
        for stage in stages:
            assert callable(approach.entry(stage)), (approach.name, stage)
        assert approach.ranked == ("ranks" in schema["$defs"][approach.name]["properties"]), approach.name


def test_names_and_patterns_select_by_attribute():
    assert approaches.names(stages="fit") == ["embed", "setfit", "tfidf"]
    assert set(approaches.names(generative=True)) == {"instruct", "zeroshot", "fewshot"}
    assert set(approaches.pattern(stages="train", modes=approaches.CLASSIFIER_MODES).split("|")) == {"head", "frozen", "encoder"}
    with pytest.raises(UserError, match="unknown approach 'lora' \\(known: "):
        approaches.get("lora")
    with pytest.raises(UserError, match="approach 'zeroshot' has no train step"):
        approaches.get("zeroshot").entry("train")


def test_no_module_outside_the_approaches_spells_out_the_names_of_several():
    """Generic code (grid, tables, plots, rules) asks the registry; only an approach's own module,
    the registry and the paper's claims name approaches."""
    names = "|".join(approaches.NAMES)
    generic = [REPO / "src/clsbench" / f for f in ("grid.py", "tables.py", "plots.py", "metrics.py", "cell.py",
                                                   "training.py", "adapters.py", "batching.py")]
    generic += sorted((REPO / "workflow/rules").glob("*.smk"))
    for path in generic:
        hits = re.findall(rf'"({names})"', path.read_text())
        assert not hits, f"{path.name} names approaches {hits}"


def test_unranked_approach_refuses_a_rank(tmp_path):
    run = subprocess.run([sys.executable, "-m", "clsbench.cell", "train", "--approach", "frozen", "--model-json", "m.json",
                          "--data-dir", ".", "--out-dir", str(tmp_path), "--rank", "8", "--seed", "1", "--hparams", "{}"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "approach 'frozen' takes no LoRA rank: its cells are r0, not r8" in run.stderr


TRAIN = pd.DataFrame({"id": [f"train-{i}" for i in range(9)], "text": [f"text {i}" for i in range(9)],
                      "labels": [["a"], ["a"], ["a"], ["b"], ["b"], ["c"], ["a", "b"], ["b"], ["a"]]})


def test_few_shot_examples_cover_every_label_and_depend_on_the_seed_only():
    picked = prompting.few_shot_examples(TRAIN, ["a", "b", "c"], shots=2, seed=1)
    ids = [ident for ident, _, _ in picked]
    assert len(ids) == len(set(ids)) == 5  # a, a, b, b, c (c has one example): no example twice
    for name, want in (("a", 2), ("b", 2), ("c", 1)):
        assert sum(name in gold for _, _, gold in picked) >= want
    assert picked == prompting.few_shot_examples(TRAIN, ["a", "b", "c"], shots=2, seed=1)
    assert any(prompting.few_shot_examples(TRAIN, ["a", "b", "c"], shots=2, seed=s) != picked for s in range(2, 6))


def test_few_shot_says_which_labels_have_fewer_examples_than_shots():
    """'c' has one training example: with shots 2 the notice names it (1 of 2); with shots 1, nothing."""
    picked = prompting.few_shot_examples(TRAIN, ["a", "b", "c"], shots=2, seed=1)
    assert prompting.few_shot_shortfall(picked, ["a", "b", "c"], 2) == "'c' (1 of 2)"
    assert prompting.few_shot_shortfall(prompting.few_shot_examples(TRAIN, ["a", "b", "c"], 1, 1), ["a", "b", "c"], 1) == ""


@pytest.mark.parametrize("multi", [False, True])
def test_few_shot_prompt_shows_solved_examples_in_the_answer_format_of_training(multi):
    labels = ["business", "sport"]
    block = prompts.examples_block([("first text", ["sport"])], labels, multi)
    prompt = prompts.instruction(labels, multi) + block + "the text" + prompts.tail(multi)
    answer = prompts.answer(["sport"], labels, multi)
    opening = "text: " if multi else "TEXT: "
    assert prompt.count(opening) == 2 and f"{opening}first text{prompts.tail(multi)}{answer}\n\n{opening}the text" in prompt
    assert prompt.endswith(prompts.tail(multi))


def test_call_passes_only_the_arguments_an_entry_point_takes():
    def predict(adapter_dir, data_dir, hp, threads=None):
        return adapter_dir, data_dir, hp, threads

    assert cell.call(predict, "a", data_dir="d", hp={}, seed=3, threads=1) == ("a", "d", {}, 1)
