"""LoRA dropout with NumPy's random numbers (clsbench.dropout): the distribution of torch's dropout,
reproducible from torch's seed, on every LoRA layer of a CPU cell."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_HEAD_HP

from clsbench import dropout, head
from clsbench.io import read_json


def test_numpy_dropout_keeps_the_distribution_and_the_expectation():
    layer = dropout.NumpyDropout(0.05).train()
    x = torch.ones(1_000_000)
    y = layer(x)
    assert abs((y == 0).float().mean().item() - 0.05) < 0.001  # 4 standard deviations of the share
    assert abs(y.mean().item() - 1.0) < 0.003  # kept elements scaled by 1 / (1 - p)
    zero, kept = torch.unique(y).tolist()
    assert zero == 0.0 and kept == pytest.approx(65536 / (65536 - 3277))
    assert torch.equal(layer.eval()(x), x)  # evaluation: the identity


def test_numpy_dropout_is_reproducible_from_torchs_seed_and_backpropagates_its_mask():
    layer = dropout.NumpyDropout(0.3).train()
    x = torch.randn(64, 33, requires_grad=True)
    torch.manual_seed(7)
    a = layer(x)
    torch.manual_seed(7)
    b = layer(x)
    assert torch.equal(a, b) and not torch.equal(a, layer(x))  # same seed, same mask; next call, another
    a.sum().backward()
    assert torch.allclose(x.grad, (a.detach() / x.detach()).nan_to_num())  # gradient: the mask times the scale


def test_a_cpu_cell_draws_its_lora_dropout_with_numpy_unless_told(tmp_path, tiny_model, bbc_small):
    """``lora_dropout_rng: auto`` is NumPy on a CPU (torch on a GPU); every LoRA layer's dropout is
    replaced, and the cell records which it used; ``torch`` keeps peft's."""
    from clsbench import classifier, models, runtime
    from clsbench.hparams import typed

    assert dropout.resolve("auto", cuda=False) == "numpy" and dropout.resolve("auto", cuda=True) == "torch"
    info = json.loads(tiny_model.read_text())
    tok = models.load_tokenizer(info["path"])
    kwargs = classifier.classification_kwargs(["a", "b"], False, tok.pad_token_id)
    env = runtime.device_setup(2, "fp32")
    for rng, expected in (("auto", dropout.NumpyDropout), ("torch", torch.nn.Dropout)):
        h = typed(head.HeadHparams, {**TINY_HEAD_HP, "lora_dropout_rng": rng}, "test")
        model = head.build_model(info, kwargs, h, env, rank=2)
        drops = [m.lora_dropout["default"] for m in model.modules() if hasattr(m, "lora_dropout")]
        assert len(drops) == 2 * 7 and all(type(d) is expected for d in drops)  # 2 layers x 7 projections
    out = tmp_path / "cell"
    head.train(str(tiny_model), str(bbc_small), str(out), 2, 1, {**TINY_HEAD_HP, "max_epochs": 1}, 2)
    assert read_json(out / "train_info.json")["lora_dropout_rng"] == "numpy"


def test_numpy_dropout_scales_a_bf16_input_as_its_float32_value_rounded_once():
    """The kept values of a bf16 input are its float32 value times the float32 scale, rounded to bf16
    once (what autocast made of the float32 path), not times a scale rounded to bf16 first."""
    drop = dropout.NumpyDropout(0.05).train()
    x = torch.randn(1 << 14).bfloat16()
    torch.manual_seed(0)
    half = drop(x)
    torch.manual_seed(0)
    full = drop(x.float())
    assert torch.equal(half, full.bfloat16()) and (half == 0).any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
def test_numpy_dropout_drops_the_same_elements_whatever_the_inputs_dtype(dtype):
    """The mask is written as 1.0/0.0 bits of bf16, fp16 or fp32 (a conversion for other dtypes): the
    same seed drops the same elements in each, of a size that is not a multiple of the four draws a
    64-bit word gives."""
    drop = dropout.NumpyDropout(0.05).train()
    x = torch.arange(1, 4100, dtype=torch.float32)
    torch.manual_seed(3)
    reference = drop(x)
    torch.manual_seed(3)
    y = drop(x.to(dtype))
    assert y.dtype == dtype and torch.equal(y == 0, reference == 0) and (y == 0).any()
    assert torch.equal(y, torch.where(reference != 0, x.to(dtype) * drop.scale, 0).to(dtype))


def test_numpy_dropout_drops_what_a_seed_dropped_before_the_draws_were_read_as_raw_words():
    """Cells trained before the mask came from SFC64's raw words drew ``Generator.integers(0, 2**16)``:
    the same seed drops the same elements now, so their runs reproduce."""
    drop = dropout.NumpyDropout(0.05).train()
    torch.manual_seed(11)
    seed = int(torch.randint(0, 2**62, (1,)).item())
    before = np.random.Generator(np.random.SFC64(seed)).integers(0, 1 << 16, 4099, dtype=np.uint16) < drop.threshold
    torch.manual_seed(11)
    assert torch.equal(drop(torch.ones(4099)) == 0, torch.from_numpy(before))
