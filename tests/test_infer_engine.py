"""The one inference stack: `Engine` leaves the caller's model alone, `generate()` (in-process) gives what the
streaming path gives, the stop ids are one list, and a failed bf16 probe on an AMX CPU is said out loud."""

from __future__ import annotations

import logging

import pytest
import torch

from llmchain.infer import forward
from llmchain.infer.engine import Engine, stop_token_ids
from llmchain.infer.sampling import SamplingParams
from llmchain.model.llama import Llama, LlamaConfig

CFG = dict(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, max_position_embeddings=128)


class _Tok:
    """The little of a tokenizer the engine uses: byte ids, decode, eos, vocab."""

    eos_token_id = 299

    def decode(self, ids, **_):
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def get_vocab(self):
        return {"<|im_end|>": 298, "<|endoftext|>": 299}


def _model(seed: int = 0) -> Llama:
    torch.manual_seed(seed)
    return Llama(LlamaConfig(**CFG)).eval()


@pytest.mark.parametrize("dtype", ["float32", "auto"])
def test_engine_leaves_the_callers_model_as_it_was(dtype):
    model = _model()
    before = {k: (v.data_ptr(), v.clone(), type(v)) for k, v in model.named_parameters()}
    engine = Engine(model, _Tok(), max_batch_size=2, dtype=dtype)
    engine.generate([[1, 2, 3]], SamplingParams(max_tokens=4, temperature=0))
    after = dict(model.named_parameters())
    assert set(after) == set(before)
    for k, (ptr, value, kind) in before.items():
        assert after[k].data_ptr() == ptr and type(after[k]) is kind and torch.equal(after[k], value), k
    # and the engine holds a snapshot: training the model further does not change what it generates
    ref = engine.generate([[5, 6, 7]], SamplingParams(max_tokens=6, temperature=0))[0][0].token_ids
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    assert engine.generate([[5, 6, 7]], SamplingParams(max_tokens=6, temperature=0))[0][0].token_ids == ref


def test_greedy_engine_follows_the_models_forward():
    """fp32 engine tokens = argmax of the model's own forward over the whole prefix, step by step (no cache)."""
    model = _model(1)
    engine = Engine(model, _Tok(), max_batch_size=4, dtype="float32", eos_token_ids=[])
    prompts = [[10, 20, 30], [7], [100, 101, 102, 103, 104, 105]]
    outs = engine.generate(prompts, SamplingParams(max_tokens=10, temperature=0))
    for ids, (c,) in zip(prompts, outs, strict=True):
        seq = list(ids)
        with torch.no_grad():
            for tok in c.token_ids:
                logits = model(torch.tensor([seq]))[0][0, -1]
                # the engine's pick is the forward's best up to fp32 summation-order noise
                assert logits[tok] >= logits.max() - 1e-4
                seq.append(tok)
        assert len(c.token_ids) == 10 and c.finish_reason == "length"


def test_in_process_generate_equals_the_streamed_requests():
    model = _model(2)
    prompts = [[1, 2, 3, 4], [9, 8], [50] * 20]
    params = [SamplingParams(max_tokens=8, temperature=0.9, top_k=20, seed=s) for s in (1, 2, 3)]
    sync = Engine(model, _Tok(), max_batch_size=2, dtype="float32").generate(prompts, params)
    threaded = Engine(model, _Tok(), max_batch_size=2, dtype="float32").start()
    try:
        streamed = threaded.generate(prompts, params)  # with the thread running, requests join its batch
    finally:
        threaded.stop()
    assert [[c.token_ids for c in r] for r in sync] == [[c.token_ids for c in r] for r in streamed]
    assert [r[0].text for r in sync] == [r[0].text for r in streamed]


def test_generate_checks_every_prompt_before_running_any():
    engine = Engine(_model(), _Tok(), max_batch_size=2, dtype="float32")
    with pytest.raises(ValueError, match="context"):
        engine.generate([[1, 2], [3] * 200], SamplingParams(max_tokens=4))
    with pytest.raises(ValueError, match="prompts but"):
        engine.generate([[1, 2]], [SamplingParams(), SamplingParams()])
    assert not engine.waiting and not engine.running


def test_stop_ids_come_from_tokenizer_config_generation_config_and_end_of_turn(tmp_path):
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [5, 6]}')
    cfg = LlamaConfig(**CFG, eos_token_id=7)
    assert stop_token_ids(_Tok(), cfg, tmp_path) == [5, 6, 7, 298, 299]
    (tmp_path / "generation_config.json").write_text("{not json")
    assert stop_token_ids(_Tok(), cfg, tmp_path) == [7, 298, 299]


def test_a_failed_bf16_probe_on_an_amx_cpu_is_logged_loudly(monkeypatch, caplog):
    monkeypatch.setattr(forward, "_has_amx", lambda: True)
    monkeypatch.setattr(forward, "_onednn_bf16", lambda: True)  # as on an AMX CPU, whatever this one has

    def broken(*a, **k):
        raise RuntimeError("mkldnn op signature changed")

    monkeypatch.setattr(forward, "_Linear", broken)
    forward.bf16_supported.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="llmchain.infer"):
            assert forward.bf16_supported() is False
    finally:
        forward.bf16_supported.cache_clear()
    assert "bf16 decoding is OFF" in caplog.text and "signature changed" in caplog.text


def test_engine_applies_lora_adapters_as_the_model_forward_does():
    """A PEFT LoRA model (as `finetune sft --lora` trains it): the engine's snapshot includes the adapters'
    deltas, so its greedy tokens follow the adapted forward, not the bare base weights."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(4)
    peft_model = get_peft_model(_model(3), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj",
                                                                                       "o_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # B starts at zero: make the adapters matter
    model = peft_model.base_model.model.eval()
    engine = Engine(model, _Tok(), max_batch_size=1, dtype="float32", eos_token_ids=[])
    (c,) = engine.generate([[3, 1, 4, 1, 5]], SamplingParams(max_tokens=8, temperature=0))[0]
    seq = [3, 1, 4, 1, 5]
    with torch.no_grad():
        for tok in c.token_ids:
            logits = model(torch.tensor([seq]))[0][0, -1]
            assert logits[tok] >= logits.max() - 1e-4
            seq.append(tok)
        with peft_model.disable_adapter():  # and the adapters change the text, so this checks something
            bare = Engine(model, _Tok(), max_batch_size=1, dtype="float32", eos_token_ids=[])
            (b,) = bare.generate([[3, 1, 4, 1, 5]], SamplingParams(max_tokens=8, temperature=0))[0]
    assert b.token_ids != c.token_ids
