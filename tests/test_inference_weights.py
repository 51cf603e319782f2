"""A 4-bit base predicts with its weights dequantised once on a CPU (clsbench.runtime.inference_weights):
the same numbers as its 4-bit layers compute, bitsandbytes' kernels where asked or on a GPU."""
from __future__ import annotations

import pytest
import torch

from clsbench import runtime
from clsbench.classifier import load_classifier
from clsbench.io import read_json


def tiny_classifier(tiny_model, precision: str, **quant):
    env = runtime.device_setup(1, precision)
    h = runtime.QuantHparams(**quant)
    model = load_classifier(read_json(tiny_model)["path"], h, env, num_labels=3, pad_token_id=0).eval()
    return model, h, env


def logits(model) -> torch.Tensor:
    ids = torch.randint(1, 500, (4, 17), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return model(input_ids=ids).logits


def four_bit_forwards_kept(model) -> bool:
    return all("forward" not in vars(m) for m in runtime.four_bit_layers(model))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_dequantised_weights_compute_what_the_4bit_layers_compute(tiny_model, precision):
    model, h, env = tiny_classifier(tiny_model, precision)
    runtime.cpu_inference_kernel(model, False)  # the 4-bit layers as training's evaluation runs them
    before = logits(model)
    assert runtime.inference_weights(model, h, env) == "dequantized"
    assert not four_bit_forwards_kept(model)
    assert torch.equal(logits(model), before)


def test_a_gpu_and_4bit_keep_bitsandbytes_kernels(tiny_model):
    model, h, env = tiny_classifier(tiny_model, "fp32")
    assert runtime.inference_weights(model, h, {**env, "cuda": True}) == "4bit"  # auto on a GPU
    model, h, env = tiny_classifier(tiny_model, "fp32", inference_weights="4bit")
    assert runtime.inference_weights(model, h, env) == "4bit"
    assert four_bit_forwards_kept(model)


def test_an_unquantised_model_has_nothing_to_dequantise(tiny_model):
    model, h, env = tiny_classifier(tiny_model, "fp32", quantization="none")
    assert runtime.inference_weights(model, h, env) == "none"


def test_a_checkpoint_of_a_dequantised_model_still_holds_the_4bit_weights(tiny_model):
    model, h, env = tiny_classifier(tiny_model, "fp32")
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    runtime.inference_weights(model, h, env)
    after = model.state_dict()
    assert saved.keys() == after.keys()
    assert all(torch.equal(saved[k], after[k]) for k in saved)


def test_auto_keeps_4bit_kernels_when_the_dequantised_weights_would_not_fit(tiny_model, monkeypatch, capsys):
    import psutil

    model, h, env = tiny_classifier(tiny_model, "bf16")
    need = sum(m.in_features * m.out_features * 2 for m in runtime.four_bit_layers(model))  # bf16: 2 bytes
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("Memory", (), {"available": 2 * need - 2})())
    assert runtime.inference_weights(model, h, env) == "4bit" and four_bit_forwards_kept(model)
    assert "bitsandbytes' 4-bit kernels instead" in capsys.readouterr().out
    monkeypatch.setattr(psutil, "virtual_memory", lambda: type("Memory", (), {"available": 2 * need})())
    assert runtime.inference_weights(model, h, env) == "dequantized"


def test_a_layer_repacked_for_bitsandbytes_cpu_kernel_stays_on_it(tiny_model):
    """A pass in evaluation mode with the CPU kernel allowed repacks the 4-bit weights on a CPU with
    AVX512-BF16; dequantising that layout would give wrong weights, so such layers keep the kernel."""
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("bitsandbytes repacks only on a CPU with AVX512-BF16")
    model, h, env = tiny_classifier(tiny_model, "bf16")
    runtime.cpu_inference_kernel(model, True)
    before = logits(model)  # repacks
    assert runtime.inference_weights(model, h, env) == runtime.inference_weights_of(model) == "4bit"
    assert torch.equal(logits(model), before)
