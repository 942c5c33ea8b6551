"""SFT: assistant-only loss mask (token by token), formats, packing without cross-attention, full and
LoRA fine-tuning on the human-written Self-Instruct seed tasks, merge = adapter, LoRA resume = uninterrupted.

The base is a nano Llama with a 512-token BPE trained on the same seed tasks (built once per module).
The eval-only set (user_oriented_eval.jsonl) is never used here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli, sigterm_at
from llmchain.config import SFTConfig
from llmchain.train.chat_data import encode_examples, pack, read_chat_data, render, tokenize_example
from llmchain.train.distributed import teardown_runtime
from llmchain.train.sft import SFTBatches, SFTModel, finetune_sft, rows_to_batch

SEED_TASKS = "self_instruct_human/seed_tasks_train.jsonl"


pytestmark = pytest.mark.usefixtures("fresh_runtime")  # conftest: the loop's runtime is per process


@pytest.fixture(scope="module")
def base(tmp_path_factory, shared_data, tiny_model_dir) -> Path:
    """A nano random Llama + chat tokenizer (ChatML template), as an HF model dir."""
    docs = tmp_path_factory.mktemp("sft_base") / "docs.jsonl"
    with open(docs, "w", encoding="utf-8") as f:
        for line in (shared_data / SEED_TASKS).read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            f.write(json.dumps({"text": f"{r['instruction']}\n{r['input']}\n{r['output']}"}) + "\n")
    return tiny_model_dir(docs, 512, eos_token_id=0, bos_token_id=0, pad_token_id=1)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, shared_data) -> Path:
    """48 seed tasks as Alpaca JSONL (the first 48 lines of the human-written training file)."""
    path = tmp_path_factory.mktemp("sft_data") / "seed48.jsonl"
    lines = (shared_data / SEED_TASKS).read_text(encoding="utf-8").splitlines()[:48]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tokenizer_of(base: Path):
    from llmchain.tokenizer import load_tokenizer

    return load_tokenizer(base)


def cfg(base: Path, data: Path, out: Path, **kw) -> SFTConfig:
    defaults = dict(model=str(base), data=str(data), out=str(out), seq_len=128, batch_size=4, lr=3e-3,
                    precision="fp32", samples=1, sample_tokens=4, val_fraction=0.25, log_every=100,
                    threads=1)  # fmt: skip
    return SFTConfig(**{**defaults, **kw})


# --- the loss mask ------------------------------------------------------------------------------------


def test_loss_mask_covers_exactly_the_assistant_tokens(base):
    tok = tokenizer_of(base)
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a prime."},
        {"role": "assistant", "content": "Seven."},
        {"role": "user", "content": "And an even one?"},
        {"role": "assistant", "content": "Two, the only one."},
    ]
    ids, mask = tokenize_example(tok, messages)
    assert tok.decode(ids) == render(tok, messages)  # the pieces tokenize back to the rendered conversation
    runs, cur = [], []
    for i, m in zip(ids, mask, strict=True):
        if m:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    # Token by token: the masked runs are exactly each reply plus its end-of-turn marker, in order.
    assert [tok.decode(r) for r in runs] == ["Seven.<|im_end|>", "Two, the only one.<|im_end|>"]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert [i for i, m in zip(ids, mask, strict=True) if m and i == im_end] == [im_end, im_end]
    # No prompt token is trained: every unmasked token belongs to the template or the other turns.
    unmasked = tok.decode([i for i, m in zip(ids, mask, strict=True) if not m])
    assert "Seven" not in unmasked and "only one" not in unmasked and "Name a prime." in unmasked


def test_targets_are_next_assistant_tokens_only(base, shared_data):
    tok = tokenizer_of(base)
    data = read_chat_data(shared_data / SEED_TASKS)
    enc = encode_examples(tok, data.examples[:3], max_len=128, too_long="truncate")
    batch = rows_to_batch(enc, [[0], [1], [2]], pad_id=tok.pad_token_id, packed=False)
    for b in range(3):
        ids, mask = enc.ids[b], enc.masks[b]
        for t in range(batch["input_ids"].shape[1]):
            expected = ids[t + 1] if t + 1 < len(ids) and mask[t + 1] else -100
            assert int(batch["targets"][b, t]) == expected


def test_formats_are_detected_and_render_alike(tmp_path, shared_data):
    alpaca = read_chat_data(shared_data / "alpaca_1k/alpaca_data_1k.json")  # a JSON array
    assert alpaca.format == "alpaca" and len(alpaca.examples) == 1000
    rec = json.loads((shared_data / SEED_TASKS).read_text(encoding="utf-8").splitlines()[0])
    user = rec["instruction"] + (f"\n\n{rec['input']}" if rec["input"] else "")
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": rec["output"]}]
    (tmp_path / "m.jsonl").write_text(json.dumps({"messages": msgs}) + "\n")
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": user, "completion": rec["output"]}) + "\n")
    seed = read_chat_data(shared_data / SEED_TASKS)
    m, p = read_chat_data(tmp_path / "m.jsonl"), read_chat_data(tmp_path / "p.jsonl")
    assert (seed.format, m.format, p.format) == ("alpaca", "messages", "prompt_completion")
    assert seed.examples[0] == m.examples[0] == p.examples[0]


def test_too_long_examples_are_truncated_or_dropped_and_counted(base, shared_data):
    tok = tokenizer_of(base)
    examples = read_chat_data(shared_data / SEED_TASKS).examples[:40]
    lengths = [len(tokenize_example(tok, e)[0]) for e in examples]
    longer = sum(n > 64 for n in lengths)
    assert longer > 0
    dropped = encode_examples(tok, examples, 64, "drop")
    assert dropped.dropped == longer and len(dropped.ids) == 40 - longer
    cut = encode_examples(tok, examples, 64, "truncate")
    assert cut.truncated == longer and cut.dropped + len(cut.ids) == 40
    assert max(len(x) for x in cut.ids) <= 64


# --- packing ------------------------------------------------------------------------------------------


def test_packed_rows_compute_what_each_example_computes_alone(base, shared_data):
    from llmchain.model.io import load_model

    tok = tokenizer_of(base)
    enc = encode_examples(tok, read_chat_data(shared_data / SEED_TASKS).examples[:6], 96, "truncate")
    n = len(enc.ids)
    rows = pack([len(x) for x in enc.ids], 200)
    assert any(len(r) > 1 for r in rows) and sorted(i for r in rows for i in r) == list(range(n))
    model = SFTModel(load_model(base))
    packed = rows_to_batch(enc, rows, tok.pad_token_id, packed=True)
    single = rows_to_batch(enc, [[i] for i in range(n)], tok.pad_token_id, packed=False)
    with torch.no_grad():
        loss_packed = model(**packed)
        loss_single = model(**single)  # both are token means over the same target tokens
    assert int((packed["targets"] != -100).sum()) == int((single["targets"] != -100).sum())
    torch.testing.assert_close(loss_packed, loss_single, rtol=1e-5, atol=1e-5)
    # And attention really is cut: without the block mask the packed loss differs.
    with torch.no_grad():
        leaky = model(packed["input_ids"], packed["targets"], packed["positions"], None)
    assert not torch.allclose(leaky, loss_single, atol=1e-4)


# --- training -----------------------------------------------------------------------------------------


def test_full_sft_val_loss_falls_and_final_model_opens(base, small_data, tmp_path):
    from llmchain.model.io import load_model

    result = finetune_sft(cfg(base, small_data, tmp_path / "run", epochs=3, pack=True), quiet=True)
    vals = [r["loss"] for r in map(json.loads, (tmp_path / "run/metrics.jsonl").read_text().splitlines())
            if r.get("split") == "val"]  # fmt: skip
    assert len(vals) == 3 and vals[-1] < vals[0] - 0.1, vals
    samples = sorted((tmp_path / "run/samples").glob("step-*.jsonl"))
    assert len(samples) == 3 and {"prompt", "reference", "generation"} <= json.loads(samples[0].read_text()).keys()
    model = load_model(result.final)
    assert (result.final / "tokenizer_config.json").is_file() and (result.final / "manifest.json").is_file()
    assert model.config.vocab_size == 512 and result.adapter is None


def test_lora_trains_only_adapters_and_merge_equals_adapted_model(base, small_data, tmp_path):
    from peft import PeftModel

    from llmchain.model.io import load_model

    result = finetune_sft(cfg(base, small_data, tmp_path / "run", lora=True, lora_r=4, lr=1e-2, max_steps=6,
                              lora_dropout=0.0), quiet=True)  # fmt: skip
    adapter = load_file(result.adapter / "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)  # the adapter holds adapter weights only
    assert any(float(v.abs().max()) > 0 for k, v in adapter.items() if "lora_B" in k)  # and they trained
    before, merged = load_model(base).state_dict(), load_model(result.final).state_dict()
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    for name, w in before.items():
        if any(f".{t}." in name for t in targets):
            continue
        assert torch.equal(w, merged[name]), f"{name} changed but has no adapter"
    assert any(not torch.equal(before[n], merged[n]) for n in before if ".q_proj." in n)
    # The merged model computes what the base model + adapter computes.
    adapted = PeftModel.from_pretrained(load_model(base), result.adapter).eval()
    x = torch.randint(0, 512, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(load_model(result.final)(x)[0], adapted(x)[0], rtol=1e-4, atol=1e-5)


def test_lora_resume_equals_uninterrupted(base, small_data, tmp_path):
    kw = dict(lora=True, lora_r=4, lr=1e-2, max_steps=6, save_every=2, lora_dropout=0.1, samples=0)
    full = finetune_sft(cfg(base, small_data, tmp_path / "full", **kw), quiet=True)
    teardown_runtime()
    with sigterm_at(SFTBatches, 3):
        cut = finetune_sft(cfg(base, small_data, tmp_path / "cut", **kw), quiet=True)
    assert not cut.fit.completed and cut.fit.step == 4 and cut.adapter is None
    teardown_runtime()
    resumed = finetune_sft(cfg(base, small_data, tmp_path / "cut", resume="auto", **kw), quiet=True)
    assert resumed.fit.completed and resumed.fit.step == 6
    a = load_file(full.adapter / "adapter_model.safetensors")
    b = load_file(resumed.adapter / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# --- user errors --------------------------------------------------------------------------------------


def test_sft_user_errors_are_one_line(base, small_data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    no_template = tmp_path / "nt"
    no_template.mkdir()
    for f in base.iterdir():
        (no_template / f.name).write_bytes(f.read_bytes())
    tc = json.loads((no_template / "tokenizer_config.json").read_text())
    tc.pop("chat_template")
    (no_template / "tokenizer_config.json").write_text(json.dumps(tc))
    cases = [
        (["--model", str(base), "--data", str(tmp_path / "missing.jsonl")], "file not found"),
        (["--model", str(base), "--data", str(bad)], "cannot tell the record format"),
        (["--model", str(base), "--data", str(empty)], "empty"),
        (["--model", str(no_template), "--data", str(small_data)], "chat_template"),
        (["--model", str(base), "--data", str(small_data), "--lora", "--lora-targets", "qkv"], "lora-targets"),
    ]
    for args, message in cases:
        code, _, err = run_cli("finetune", "sft", *args, "--out", str(tmp_path / "o"), "--max-steps", "1")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)


def test_max_time_caps_given_epochs_and_sets_the_length_without_them(base, small_data, tmp_path):
    # a recipe's budget share gives the stage max_time: with epochs in its config, the epochs still decide
    capped = finetune_sft(cfg(base, small_data, tmp_path / "capped", epochs=1, max_time=600), quiet=True)
    rows = capped.counts["rows"]  # one example per row (no packing): one epoch = ceil(rows / batch) steps
    assert capped.fit.step == -(-rows // 4) and capped.fit.elapsed_s < 600
    # no epochs given: the time budget sets the length (the loop runs until max_time)
    timed = finetune_sft(cfg(base, small_data, tmp_path / "timed", max_time=3), quiet=True)
    assert timed.fit.elapsed_s >= 3 and timed.fit.step > 0


# --- the best eval's weights, early stopping ------------------------------------------------------------


def test_best_weights_keeps_the_lowest_val_loss_and_counts_evals_since():
    from llmchain.train.sft import BestWeights

    lm, clock = torch.nn.Linear(2, 1), {"step": 0}
    best = BestWeights(lm, keep=True, patience=2, clock=clock)
    for step, loss in ((10, 3.0), (20, 2.0), (30, 2.5), (40, 2.4)):
        clock["step"] = step
        with torch.no_grad():
            lm.weight.fill_(step)  # the weights "at" this step
        best.update({"loss": loss})
        assert best.should_stop({}) == (step == 40)  # two evals in a row without a lower loss
    assert (best.best_step, best.best_loss) == (20, 2.0) and best.stopped
    assert best.restore(lm) and torch.equal(lm.weight, torch.full((1, 2), 20.0))
    assert not BestWeights(lm, keep=False, patience=0, clock=clock).restore(lm)  # nothing kept: nothing restored


def test_keep_best_saves_the_best_evals_weights_and_patience_stops(base, small_data, tmp_path):
    # a learning rate that over-fits 36 examples within a few epochs: val loss falls, then rises
    run = tmp_path / "run"
    result = finetune_sft(cfg(base, small_data, run, epochs=12, lr=2e-2, eval_every=3, save_every=3,
                              keep_checkpoints=100, keep_best=True, patience=3, samples=0), quiet=True)  # fmt: skip
    vals = [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r.get("split") == "val"]  # fmt: skip
    best_step, best_loss = min(vals, key=lambda v: v[1])
    c = result.counts
    assert (c["best_step"], c["best_val_loss"]) == (best_step, round(best_loss, 4)) and c["final_is_best"]
    assert best_step < vals[-1][0], vals  # the best eval was not the last (else the test shows nothing)
    final = load_file(result.final / "model.safetensors")
    at_best = load_file(run / f"checkpoints/step-{best_step}/model.safetensors")
    assert final.keys() == at_best.keys() and all(torch.equal(final[k], at_best[k]) for k in final)
    # patience 3: the run stopped at the third eval after its best, before its 12 epochs
    assert c["early_stopped"] and [s for s, _ in vals if s > best_step] == [best_step + 3 * k for k in (1, 2, 3)]
    assert result.fit.step < 12 * -(-c["rows"] // 4)
