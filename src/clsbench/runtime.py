"""What every trained approach's job needs from its runtime: device, threads and precision, 4-bit
quantisation, parameter counts, Trainer callbacks (evaluation timer, non-finite loss guard), the
key a checkpoint may resume into, peak memory, optimizer names and GPU-synchronised timing."""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from . import UserError
from .hparams import REQUIRED, param
from .io import read_json, sha256

PRECISIONS = ("auto", "bf16", "fp32")
QUANTIZATIONS = ("nf4", "fp4", "none")
INFERENCE_WEIGHTS = ("auto", "dequantized", "4bit")
OPTIMIZERS = ("adamw_torch", "adamw_bnb_8bit", "paged_adamw_32bit", "paged_adamw_8bit")  # transformers' names


@dataclass(frozen=True)
class InferenceHparams:
    """What every approach that runs a model batch by batch takes: batch size and precision."""
    eval_batch_size: int | str = param(REQUIRED, "texts per inference batch", ref="eval_batch_size")
    auto_batch_start: int | None = param(None, "first size eval_batch_size auto tries", ref="auto_batch_start")
    precision: str | None = param(None, "compute precision", ref="precision")


@dataclass(frozen=True)
class QuantHparams:
    """4-bit loading of the base model (QLoRA)."""
    quantization: str = param("nf4", "4-bit storage of the base model's weights (none: its own dtype)",
                              choices=QUANTIZATIONS)
    double_quant: bool = param(True, "quantise the 4-bit quantisation constants too (QLoRA's double quantisation)")
    inference_weights: str = param(
        "auto", "how a 4-bit base computes when predicting: dequantized (each 4-bit weight dequantised once into the "
        "compute dtype, then torch's matrix product, as training's evaluation computes; the memory of an unquantised "
        "model), 4bit (bitsandbytes dequantises on every pass), auto (dequantized on a CPU where that copy takes at "
        "most half the available memory, else 4bit)",
        choices=INFERENCE_WEIGHTS)



def device_setup(threads: int | None = None, precision: str | None = "auto") -> dict:
    """Device, thread count and compute dtype of a job. ``precision`` (the ``precision``
    hyperparameter): bf16 = the paper's bf16 mixed precision (bf16 matmuls, fp32 master weights of
    the trained parameters; on a CPU through autocast), fp32, or auto (:func:`resolve_precision`)."""
    from .gpu import claim

    claim()  # one GPU per job on multi-GPU machines, before CUDA initialises
    import torch
    from transformers.utils import logging

    logging.disable_progress_bar()
    if threads:
        torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    bf16 = resolve_precision(precision, cuda) == "bf16"
    return {"cuda": cuda, "device": "cuda" if cuda else "cpu",
            "device_name": torch.cuda.get_device_name(0) if cuda else f"cpu ({torch.get_num_threads()} threads)",
            "compute_dtype": torch.bfloat16 if bf16 else torch.float32}



def resolve_precision(precision: str | None, cuda: bool) -> str:
    """bf16 or fp32 for the ``precision`` hyperparameter: ``auto`` (the default) is bf16 where the
    hardware computes bf16 natively (a GPU; a CPU with AVX512-BF16 or AMX: :func:`native_bf16`) and
    fp32 elsewhere (AVX2-only CPUs emulate bf16, several times slower). The cell records the result
    as ``dtype``; ``precision: fp32`` (configs/cpu_fp32.yaml) keeps fp32 on any machine."""
    precision = precision or "auto"
    if precision not in PRECISIONS:
        raise UserError(f"hyperparameter precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if cuda or native_bf16() else "fp32"
    return precision


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX) rather than by emulation."""
    cpuinfo = Path("/proc/cpuinfo")
    return bool(re.search(r"avx512_bf16|amx_bf16", cpuinfo.read_text() if cpuinfo.exists() else ""))


def frozen_weights_to(model, dtype) -> None:
    """The frozen floating-point weights (norms, embeddings, a tied LM head; not the 4-bit ones, not the
    trained LoRA and head weights) in ``dtype``, the compute dtype. ``prepare_model_for_kbit_training``
    puts them in float32, which under bf16 autocast keeps the whole residual stream in float32: every
    4-bit layer then casts its input to bf16 and its output back, and the element-wise work moves twice
    the bytes (docs/throughput.md). A base without quantisation loads them in the compute dtype already."""
    for weight in model.parameters():
        if not weight.requires_grad and weight.is_floating_point() and weight.dtype != dtype:
            weight.data = weight.data.to(dtype)


def cpu_inference_kernel(model, on: bool) -> None:
    """Allow (``on``) or not bitsandbytes' CPU inference kernel in the 4-bit layers of ``model``. On a
    CPU with AVX512-BF16 a 4-bit layer repacks its weights for that kernel at its first pass in
    evaluation mode, and saving a checkpoint unpacks them, re-quantising their scales: a model
    evaluated and saved between training epochs would go on training, and predict, with a base
    slightly off the one a load gives. Off while training (evaluation then computes as the training
    steps do), on again for predicting with the trained model (:mod:`clsbench.staging`)."""
    from bitsandbytes.functional import has_avx512bf16

    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = on and has_avx512bf16()


def inference_weights(model, h, env: dict) -> str:
    """Set up the 4-bit layers of ``model`` for prediction as ``h.inference_weights`` says and return what
    they compute with: ``dequantized`` (each layer's weight dequantised once into its compute dtype and
    multiplied by torch's matrix product: the values and the product of a 4-bit layer's pass with
    bitsandbytes' CPU inference kernel off, without dequantising on every pass; bitsandbytes' fused CPU
    kernel does not use the CPU's matrix units: docs/throughput.md), ``4bit`` (bitsandbytes' kernels), or
    ``none`` (no 4-bit layer)."""
    layers = four_bit_layers(model)
    if not layers:
        return "none"
    choice = getattr(h, "inference_weights", "auto")
    if choice == "auto":
        choice = "4bit" if env["cuda"] or not dequantized_fits(layers) else "dequantized"
    if choice == "4bit":
        cpu_inference_kernel(model, True)
        return choice
    for layer in layers:
        dequantize_once(layer)
    return inference_weights_of(model)


def dequantized_fits(layers) -> bool:
    """Whether the dequantised weights of ``layers`` (in their compute dtype) take at most half of the memory
    available now; if not, ``auto`` keeps bitsandbytes' kernels and says so (a 7B base dequantised is 14 GB)."""
    import psutil
    import torch

    need = sum(m.in_features * m.out_features * torch.finfo(compute_dtype_of(m)).bits // 8 for m in layers)
    available = psutil.virtual_memory().available
    if need <= available / 2:
        return True
    print(f"inference_weights auto: the 4-bit weights dequantised would take {need / 2**30:.1f} GiB of the "
          f"{available / 2**30:.1f} GiB available; predicting with bitsandbytes' 4-bit kernels instead")
    return False


def inference_weights_of(model) -> str:
    """What the 4-bit layers of ``model`` compute with: ``dequantized``, ``4bit`` or ``none``
    (:func:`inference_weights`), as ``predict_info.json`` records it."""
    layers = four_bit_layers(model)
    if not layers:
        return "none"
    return "dequantized" if all("forward" in vars(m) for m in layers) else "4bit"


def four_bit_layers(model) -> list:
    import bitsandbytes as bnb

    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def compute_dtype_of(layer):
    """The dtype a bitsandbytes 4-bit layer computes in (float32 where none was set)."""
    import torch

    return layer.compute_dtype or torch.float32


def dequantize_once(layer) -> None:
    """A bitsandbytes 4-bit layer computing with its weight dequantised once into its compute dtype (kept
    beside the 4-bit weight, which a checkpoint saves as before): what its forward pass computes with the
    CPU inference kernel off (``bnb.matmul_4bit``: input in the compute dtype, dequantised weight, bias,
    output in the input's dtype)."""
    import types

    import bitsandbytes as bnb
    import torch

    if "forward" in vars(layer) or getattr(layer.weight.quant_state, "packing_format_for_cpu", False):
        return  # done already, or repacked for bitsandbytes' CPU kernel by a pass before: left on that kernel
    dtype = compute_dtype_of(layer)
    weight = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(dtype)
    bias = None if layer.bias is None else layer.bias.data.to(dtype)

    def forward(self, x):
        return torch.nn.functional.linear(x.to(dtype), weight, bias).to(x.dtype)

    layer.forward = types.MethodType(forward, layer)


def quantization_config(h, compute_dtype, keep: tuple[str, ...]):
    """NF4 with double quantisation (QLoRA), or None when ``quantization: none`` or ``h`` has no
    quantisation settings (:class:`QuantHparams`); ``keep``: modules left unquantised (the
    classification head; ``lm_head`` for causal LMs)."""
    if not isinstance(h, QuantHparams) or h.quantization == "none":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=h.quantization,
                              bnb_4bit_use_double_quant=h.double_quant,
                              bnb_4bit_compute_dtype=compute_dtype, llm_int8_skip_modules=list(keep))



def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) as the paper reports them: peft's count, corrected for 4-bit storage
    (a ``Params4bit`` tensor packs two 4-bit values per byte of its storage type)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * 2 * p.element_size() if p.__class__.__name__ == "Params4bit" else p.numel()
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total



def eval_timer():
    """Trainer callback timing per-epoch evaluation, so train samples/s can exclude it
    (``.eval_seconds``)."""
    from transformers import TrainerCallback

    class _Timer(TrainerCallback):
        eval_seconds = 0.0
        _t0 = None

        def on_epoch_end(self, args, state, control, **kw):
            self._t0 = time.perf_counter()

        def on_evaluate(self, args, state, control, **kw):
            if self._t0 is not None:
                self.eval_seconds += time.perf_counter() - self._t0
                self._t0 = None

    return _Timer()



def finite_loss_guard(cell: Path):
    """Trainer callback: stop at the first logged non-finite loss, naming cell, step and learning rate."""
    from transformers import TrainerCallback

    class _Guard(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            loss = (logs or {}).get("loss")
            if loss is not None and not math.isfinite(loss):
                raise UserError(f"cell {cell}: training loss became {loss} at step {state.global_step} "
                                f"(learning rate {logs.get('learning_rate')}); lower the learning rate or "
                                "check the data; no output was written")

    return _Guard()



def check_finite(history: list[dict], out_dir: Path) -> None:
    for h in history:
        if "loss" in h and not math.isfinite(h["loss"]):
            raise UserError(f"{out_dir}: loss became {h['loss']} at step {h.get('step')} "
                            f"(learning rate {h.get('learning_rate')}); lower the learning rate")



def run_key(model_json: str, data_dir: str, approach: str, rank: int, seed: int, hp: dict) -> dict:
    """What a checkpoint depends on: resuming is allowed only into the same training run."""
    data = {f: sha256(Path(data_dir) / f) for f in ("train.parquet", "val.parquet", "labels.json")}
    return {"approach": approach, "rank": rank, "seed": seed, "hp": hp, "model": read_json(model_json), "data": data}



def peak_memory_mb(env: dict) -> float:
    if env["cuda"]:
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024



def optimizer_name(name: str, env: dict) -> str:
    """The ``optimizer`` hyperparameter (transformers' ``optim`` names, every approach); a paged
    optimizer pages its state between GPU and CPU memory, so without a GPU adamw_torch is used."""
    if name.startswith("paged") and not env["cuda"]:
        print(f"optimizer {name} pages optimizer state between GPU and CPU memory; no GPU here: using adamw_torch")
        return "adamw_torch"
    return name


def timed(fn, env: dict):
    """(``fn()``, seconds), synchronising the GPU around it so the time is the work's."""
    import torch

    if env["cuda"]:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = fn()
    if env["cuda"]:
        torch.cuda.synchronize()
    return result, time.perf_counter() - t0
