"""The training steps' attention kernel (clsbench.attention): eager for short sequences on a CPU
computes SDPA's attention and gradients, SDPA elsewhere, and the loaded kernel is back after training."""
import types

import pytest
import torch
from conftest import TINY_HEAD_HP

from clsbench import attention, head
from clsbench.io import read_json


@pytest.fixture
def causal_lm(tiny_model):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(read_json(tiny_model)["path"], attn_implementation="sdpa",
                                                 dtype=torch.float32)
    return model.train()


def padded_batch(side: str):
    torch.manual_seed(1)
    lengths = torch.tensor([11, 6, 9])
    ids = torch.randint(5, 500, (3, 11))
    places = torch.arange(11)[None]
    mask = places < lengths[:, None] if side == "right" else places >= 11 - lengths[:, None]
    return {"input_ids": ids.masked_fill(~mask, 0), "attention_mask": mask.long()}


def logits_and_grads(model, batch, kernel: str):
    model.zero_grad()
    with attention.for_training(model, kernel, cuda=False) as used:
        logits = model(**batch).logits
    mask = batch["attention_mask"].bool()
    logits[mask].square().mean().backward()
    return used, logits[mask].detach(), {n: w.grad.clone() for n, w in model.named_parameters()}


@pytest.mark.parametrize("side", ["right", "left"])
def test_eager_attention_for_short_training_sequences_gives_sdpas_outputs_and_gradients(causal_lm, side):
    batch = padded_batch(side)
    used_sdpa, logits_sdpa, grads_sdpa = logits_and_grads(causal_lm, batch, "sdpa")
    used_auto, logits_auto, grads_auto = logits_and_grads(causal_lm, batch, "auto")
    assert (used_sdpa, used_auto) == ("sdpa", attention.NAME)
    assert causal_lm.config._attn_implementation == "sdpa"  # the loaded kernel is back after training
    assert torch.allclose(logits_auto, logits_sdpa, atol=1e-5)
    for name, grad in grads_sdpa.items():
        assert torch.allclose(grads_auto[name], grad, atol=1e-5), name


def test_eager_attention_over_a_cached_prefix_gives_sdpas_outputs(causal_lm):
    """Instruct's shared prompt prefix (clsbench.prefix): the rest's queries attend to the cached keys."""
    batch = padded_batch("right")
    outputs = []
    for kernel in ("sdpa", "auto"):
        with attention.for_training(causal_lm, kernel, cuda=False), torch.no_grad():
            cache = causal_lm(input_ids=batch["input_ids"][:, :4], use_cache=True).past_key_values
            outputs.append(causal_lm(input_ids=batch["input_ids"][:, 4:], attention_mask=batch["attention_mask"],
                                     past_key_values=cache).logits)
    rest = batch["attention_mask"][:, 4:].bool()
    assert torch.allclose(outputs[1][rest], outputs[0][rest], atol=1e-5)


def test_eager_attention_without_a_mask_lets_the_queries_see_the_cached_keys_before_them():
    module = types.SimpleNamespace(training=True, num_key_value_groups=1, is_causal=True)
    torch.manual_seed(2)
    query, key, value = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    out, _ = attention.by_length(module, query, key, value, None)
    last_three_of_five = torch.ones(3, 5, dtype=torch.bool).tril(2)
    expected = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=last_three_of_five)
    assert torch.allclose(out, expected.transpose(1, 2), atol=1e-6)


def test_the_kernel_is_chosen_by_mode_device_and_length(monkeypatch):
    from transformers.integrations import sdpa_attention

    calls = []
    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward", lambda *a, **k: calls.append(a[1].shape) or (0, None))
    module = types.SimpleNamespace(training=True, num_key_value_groups=1, is_causal=True)
    short, long = torch.randn(1, 2, 8, 4), torch.randn(1, 2, attention.EAGER_UP_TO + 1, 4)
    out, _ = attention.by_length(module, short, short, short, None)
    assert calls == [] and out.shape == (1, 8, 2, 4)  # eager, in transformers' (batch, tokens, heads, dim)
    attention.by_length(module, long, long, long, None)
    module.training = False
    attention.by_length(module, short, short, short, None)
    assert calls == [long.shape, short.shape]  # a long training pass and inference: SDPA


def test_a_kernel_setting_applies_to_training_only_and_where_it_pays():
    assert attention.training_kernel("auto", "sdpa", cuda=False) == attention.NAME
    assert attention.training_kernel("auto", "sdpa", cuda=True) is None  # a GPU keeps SDPA
    assert attention.training_kernel("auto", "eager", cuda=False) is None  # a model that loads eager keeps it
    assert attention.training_kernel("sdpa", "sdpa", cuda=False) is None
    assert attention.training_kernel("eager", "sdpa", cuda=True) == "eager"


def test_a_head_cell_records_its_training_kernel(tmp_path, tiny_model, bbc_small):
    out = tmp_path / "cell"
    head.train(str(tiny_model), str(bbc_small), str(out), 2, 1, {**TINY_HEAD_HP, "max_epochs": 1}, 2)
    assert read_json(out / "train_info.json")["attention"] == attention.NAME
    head.train(str(tiny_model), str(bbc_small), str(out / "sdpa"), 2, 1,
               {**TINY_HEAD_HP, "max_epochs": 1, "attention": "sdpa"}, 2)
    assert read_json(out / "sdpa" / "train_info.json")["attention"] == "sdpa"
