"""The prompt prefix a training batch shares, run once (clsbench.prefix): where it ends, and that
the loss, gradients and trained adapter are those of running it in every row."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from test_instruct import HP, LABELS, H, lm  # noqa: F401 (the fixture)

from clsbench import instruct, prefix, prompting, runtime, scoring
from clsbench.io import read_json


def test_the_shared_prefix_ends_before_padding_and_before_any_scored_position():
    ids = torch.tensor([[5, 6, 7, 8, 9, 1, 2], [5, 6, 7, 8, 3, 0, 0], [5, 6, 7, 8, 9, 9, 4]])
    assert prefix.shared_length(ids) == 4
    assert prefix.shared_length(ids[:1]) == 0  # a batch of one has nothing to share
    mask = torch.tensor([[1] * 7, [1] * 5 + [0, 0], [1] * 7])
    short = torch.tensor([[5, 6, 7, 0], [5, 6, 7, 8]])
    assert prefix.shared_length(short, torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])) == 2  # a token left to each row
    labels = torch.full_like(ids, -100)
    labels[1, 3] = 11  # row 1's token 3 carries a loss: position 2 is scored, so the prefix stops at 2
    assert prefix.shared_length(ids, mask, labels) == 2
    assert prefix.shared_length(ids, mask, torch.full_like(ids, -100)) == 4
    assert prefix.common_length([[5, 6, 7, 8], [5, 6, 7], [5, 6, 9, 9]]) == 2
    assert prefix.common_length([[5, 6, 7], [5, 6, 7]]) == 2  # a token left to each row


@pytest.fixture
def lora_lm(tiny_model):
    from peft import TaskType, get_peft_model

    h = instruct.InstructHparams(**{**HP, "quantization": "nf4", "lora_dropout": 0.0})
    env = runtime.device_setup(2, "fp32")
    torch.manual_seed(0)
    model = instruct.load_lm(read_json(tiny_model)["path"], h, env)
    model = get_peft_model(model, h.lora_config(TaskType.CAUSAL_LM, 4))
    for name, weight in model.named_parameters():  # LoRA B starts at zero: give it a gradient path both ways
        if "lora_B" in name:
            torch.nn.init.normal_(weight, std=0.05)
    return model.train()


def test_running_the_shared_prefix_once_gives_the_losses_and_gradients_of_every_row(lora_lm):
    torch.manual_seed(1)
    shared = torch.randint(5, 500, (12,))
    rows = [torch.cat([shared, torch.randint(5, 500, (n,))]) for n in (9, 5, 7)]
    ids = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=0)
    mask = (torch.arange(ids.size(1))[None] < torch.tensor([[len(r)] for r in rows])).long()
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :14] = -100  # the answer: every row's tokens from 14 on
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    grads = []
    for share in (False, True):
        lora_lm.zero_grad()
        inputs, length = prefix.split_batch(lora_lm, dict(batch)) if share else (batch, 0)
        loss = lora_lm(**inputs).loss
        loss.backward()
        grads.append((loss.item(), length, {n: w.grad.clone() for n, w in lora_lm.named_parameters()
                                            if w.requires_grad}))
    (plain_loss, _, plain), (shared_loss, length, once) = grads
    assert length == 12
    assert shared_loss == pytest.approx(plain_loss, rel=1e-5)
    assert plain and all(torch.allclose(once[n], plain[n], rtol=1e-4, atol=1e-6) for n in plain)


def test_instruct_training_with_the_shared_prefix_trains_the_same_adapter(tmp_path, tiny_model, bbc_small):
    """The whole SFTTrainer path, one epoch, NF4, without dropout: the same losses and gradient
    norms at each logged step and the same adapter, the prefix counted in train_info."""
    from safetensors.torch import load_file

    runs = {}
    for share in (False, True):
        out = tmp_path / str(share)
        hp = {**HP, "quantization": "nf4", "lora_dropout": 0.0, "share_prompt_prefix": share}
        info = instruct.train(str(tiny_model), str(bbc_small), str(out), rank=2, seed=1, hp=hp, threads=2)
        log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        runs[share] = (info, [(e["loss"], e["grad_norm"]) for e in log if "grad_norm" in e],
                       load_file(out / "adapter" / "adapter_model.safetensors"))
    (plain, plain_log, plain_w), (shared, shared_log, shared_w) = runs[False], runs[True]
    assert plain["mean_shared_prefix_tokens"] == 0 and shared["mean_shared_prefix_tokens"] > 20
    assert plain_log and np.allclose(shared_log, plain_log, rtol=1e-4)
    assert all(torch.allclose(shared_w[k], plain_w[k], rtol=1e-3, atol=1e-6) for k in plain_w)


@pytest.mark.parametrize("multi", [False, True], ids=["single-label", "multi-label"])
def test_score_mode_with_the_prefix_run_once_gives_each_prompts_own_probabilities(lm, multi, monkeypatch):  # noqa: F811
    """Batches of prompts (instruction and labels shared, texts of different lengths) scored with the
    shared prefix run once: the probabilities of each prompt scored alone (a batch of one shares nothing)."""
    model, tok = lm
    enc = prompting.Encoder(tok, LABELS, multi, H)
    texts = ["shares rose", "the match ended in a draw after extra time", "a new phone", "ministers met today",
             "the film won three awards at the festival last night"]
    rows = [enc.prompt_ids(t) for t in texts]
    real, runs = prefix.prefix_cache, []

    def counted(model, ids, repeats, **inputs):
        runs.append(ids.size(1))
        return real(model, ids, repeats, **inputs)

    monkeypatch.setattr(prefix, "prefix_cache", counted)
    batched, _, _ = scoring.run_mode("score", model, enc, rows, replace(H, eval_batch_size=4), {"device": "cpu"})
    assert runs and min(runs) >= prefix.MIN_SHARED_TOKENS  # the batches of 4 and of 1 shared their prefix
    runs.clear()
    alone, _, _ = scoring.run_mode("score", model, enc, rows, replace(H, eval_batch_size=1), {"device": "cpu"})
    assert not runs
    assert np.allclose(batched, alone, atol=1e-5)


def test_generation_with_the_prefix_run_once_gives_each_prompts_own_answers(lm):  # noqa: F811
    model, tok = lm
    enc = prompting.Encoder(tok, LABELS, False, H)
    texts = ["shares rose", "the match ended in a draw after extra time", "a new phone", "ministers met"]
    rows = [enc.prompt_ids(t) for t in texts]
    assert prefix.common_length(rows) >= prefix.MIN_SHARED_TOKENS
    batched = scoring.generate(model, enc, rows, 4, "cpu")
    assert batched == [scoring.generate(model, enc, [row], 1, "cpu")[0] for row in rows]
    assert any(batched)  # the random model's answers are not all empty
