"""The continuous-batching engine: batch-invariant decoding, slots, cancellation, queue bound, n > 1."""

from __future__ import annotations

import time

import pytest
import torch

from conftest import skip_or_fail
from llmchain.infer.engine import Engine, EngineOverloaded, PromptTooLong
from llmchain.infer.forward import KVCache, prepare_decode, step_logits
from llmchain.infer.kernels import BlockedKV
from llmchain.infer.kernels import load as load_kernel
from llmchain.infer.sampling import SamplingParams
from llmchain.model.llama import Llama, LlamaConfig
from llmchain.serve.worker import EngineProcess, EngineSpec


@pytest.fixture(scope="module", params=["thread", "process"])
def engine(request, serve_model_dir):
    """The engine on a thread of this process, and in a child process behind `EngineProcess` (how
    `llmchain serve` runs it): every engine test runs against both."""
    from transformers import AutoTokenizer

    from llmchain.model.io import load_model

    d = serve_model_dir()
    tok = AutoTokenizer.from_pretrained(d)
    if request.param == "thread":
        eng = Engine(load_model(d), tok, max_batch_size=8, max_queue=16, eos_token_ids=[tok.eos_token_id],
                     threads=1).start()  # fmt: skip
    else:
        eng = EngineProcess(EngineSpec(str(d), max_batch_size=8, max_queue=16, threads=1)).start()
        eng.tokenizer = tok
    yield eng
    eng.stop()


def _need_bf16_ops() -> None:
    """The bf16 path's oneDNN ops run on every CPU oneDNN has bf16 kernels for (an AVX-512 CPU without
    AMX too), not only where the engine picks them (AMX, `bf16_supported`): the tests run that path
    wherever it runs, its start-up probes (row chunk, prompt band) choosing call sizes for that CPU."""
    from llmchain.infer.forward import _onednn_bf16

    if not _onednn_bf16():  # a property of the CPU, not an install step: skipped under CI=true too
        pytest.skip("oneDNN has no bf16 kernels for this CPU (no AVX-512/AMX): the bf16 decode path cannot run here")


@pytest.mark.parametrize("mode", ["fp32", "bf16", "bf16-kernel", "bf16-kernel-generic"])
@torch.inference_mode()
def test_step_rows_are_bit_identical_whatever_the_batch(mode):
    bf16, kernel = mode != "fp32", mode.startswith("bf16-kernel")
    generic = True if mode.endswith("generic") else None  # None: LLMCHAIN_KERNELS_GENERIC decides
    if bf16:
        _need_bf16_ops()
    if kernel and load_kernel(32, 2, generic) is None:
        skip_or_fail("the decode-attention C kernel cannot be built here (no cc, or not Linux)")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=1000, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=640)  # fmt: skip
    model = Llama(cfg).eval()
    g = torch.Generator().manual_seed(1)
    # 300 and 530: keys beyond one 256-key block; bf16: more than 32 rows per step too
    lens = (3, 17, 40, 64, 65, 100, 9, 1, 33, 300) * (4 if bf16 else 1) + (530,)
    prompts = [torch.randint(0, 1000, (n,), generator=g).tolist() for n in lens]
    B = len(prompts)
    cache = BlockedKV(cfg, B + 2, 640) if kernel else KVCache(cfg, B + 2, 640)
    w = prepare_decode(model, 640, bf16=bf16)
    w.kernels = load_kernel(cfg.head_dim, 2, generic) if kernel else None  # bf16 keys/values, read in C
    assert (w.kernels is not None) == kernel and (not generic or w.kernels.isa == "generic")
    none = torch.zeros(0, dtype=torch.long)
    tol = dict(rtol=0, atol=2e-2) if bf16 else dict(rtol=1e-4, atol=1e-4)  # bf16 matmuls vs the fp32 model

    def step(tokens, positions, slots, new_prompts, contiguous=False):
        return step_logits(cache, w, tokens, positions, slots, new_prompts, contiguous=contiguous)

    # prefill: each prompt alone, then all of them in one step — the same bits
    alone = [step(none, none, none, [(p, i)])[0] for i, p in enumerate(prompts)]
    together = step(none, none, none, [(p, i) for i, p in enumerate(prompts)])
    assert all(torch.equal(a, t) for a, t in zip(alone, together, strict=True))
    ref, _ = model(torch.tensor([prompts[5]]), last_only=True)  # and the reference forward agrees
    torch.testing.assert_close(alone[5], ref[0, -1].float(), **tol)
    # decode: every row alone, in a mix, and beside a prompt being prefilled
    tokens = torch.randint(0, 1000, (B,), generator=g)
    positions = torch.tensor([len(p) for p in prompts])
    slots = torch.arange(B)
    batched = step(tokens, positions, slots, [], contiguous=True)  # slots 0..B-1: a view of the cache
    assert torch.equal(step(tokens, positions, slots, []), batched)  # the same as gathering it
    for i in (0, 5, 9, B - 1):  # rows against the model's forward over prompt + token (no cache)
        ref, _ = model(torch.tensor([prompts[i] + [int(tokens[i])]]), last_only=True)
        torch.testing.assert_close(batched[i], ref[0, -1].float(), **tol)
    for i in range(B):
        assert torch.equal(step(tokens[i : i + 1], positions[i : i + 1], slots[i : i + 1], [])[0], batched[i])
    sub = [7, 2, 5]
    mixed = step(tokens[sub], positions[sub], slots[sub], [(prompts[3], B), (prompts[0], B + 1)])
    assert torch.equal(mixed[:3], batched[sub])
    assert torch.equal(mixed[3], alone[3]) and torch.equal(mixed[4], alone[0])


def _text(handle) -> tuple[str, list[int]]:
    text, ids = [], []
    for e in handle.iter_events(timeout=60):
        text.append(e.text)
        ids += e.token_ids
    return "".join(text), ids


def test_greedy_outputs_do_not_depend_on_the_batch(engine):
    tok = engine.tokenizer
    prompts = ["First Citizen:", "Before we proceed", "You are all resolved", "ROMEO:", "What say you?",
               "Speak, speak.", "O, she doth", "Good morrow", "Let us kill him", "a", "the king"]  # fmt: skip
    greedy = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    alone = [_text(engine.submit(tok.encode(p), greedy)) for p in prompts]
    handles = []
    for p in prompts:  # more requests than slots: the later ones join as earlier ones finish
        handles.append(engine.submit(tok.encode(p), greedy))
        if len(handles) == 4:
            time.sleep(0.05)
    together = [_text(h) for h in handles[:4]]
    assert together + [_text(h) for h in handles[4:]] == alone
    assert len({t for t, _ in alone}) > 5  # the random model's continuations really differ


def test_seeded_sampling_is_reproducible_and_n_choices_differ(engine):
    ids = engine.tokenizer.encode("To be, or not to be")
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=42, n=3, ignore_eos=True)

    def run():
        out = {0: [], 1: [], 2: []}
        for e in engine.submit(ids, params).iter_events(timeout=60):
            out[e.index] += e.token_ids
        return out

    a, b = run(), run()
    assert a == b and all(len(v) == 12 for v in a.values())
    assert len({tuple(v) for v in a.values()}) > 1


def test_cancel_frees_the_slot_and_the_queue_is_bounded(engine):
    ids = engine.tokenizer.encode("Now is the winter")
    long = SamplingParams(max_tokens=400, temperature=0, ignore_eos=True)
    handles = [engine.submit(ids, long) for _ in range(8)]  # fills every slot...
    deadline = time.time() + 30
    while engine.slots_used < 8 and time.time() < deadline:
        time.sleep(0.01)
    more = [engine.submit(ids, long) for _ in range(16)]  # ...and then the queue
    with pytest.raises(EngineOverloaded):
        engine.submit(ids, long)
    for h in handles + more:
        engine.cancel(h)
    deadline = time.time() + 30
    while (engine.slots_used or engine.num_waiting) and time.time() < deadline:
        time.sleep(0.02)
    assert engine.slots_used == 0 and engine.num_waiting == 0
    events = list(handles[0].iter_events(timeout=10))
    assert events[-1].finish_reason == "abort"
    assert _text(engine.submit(ids, SamplingParams(max_tokens=3, temperature=0)))[1]  # still serving


def test_prompt_longer_than_the_context_is_refused(engine):
    with pytest.raises(PromptTooLong, match="max_model_len"):
        engine.submit([1] * engine.max_model_len, SamplingParams())


@torch.inference_mode()
def test_prompt_rows_come_out_the_same_in_every_call_size_of_the_band():
    """Prompt rows are packed into calls of PROMPT_MIN..band rows (`_Linear._calls`), padded to a few
    sizes. The start-up probe checks those sizes; here every M of the band, with the rows at both ends
    of the call, on this test's model shapes: the same bits as the rows alone in a PROMPT_MIN-row call."""
    from llmchain.infer.forward import PROMPT_MIN, PROMPT_STEP, _Linear

    _need_bf16_ops()
    g = torch.Generator().manual_seed(5)
    lp = torch.ops.mkldnn._linear_pointwise
    for n, k in [(256, 128), (128, 128), (352, 128), (128, 352), (1000, 128)]:
        lin = _Linear(torch.randn(n, k, generator=g), None, bf16=True)
        assert lin.band is not None
        x = torch.randn(lin.band + PROMPT_MIN, k, generator=g).bfloat16()
        ref = lp(x[:PROMPT_MIN], lin.w, None, "none", [], "")
        for m in range(PROMPT_MIN + 1, lin.band + 1):
            other = x[PROMPT_MIN:m]
            assert torch.equal(lp(torch.cat([x[:PROMPT_MIN], other]), lin.w, None, "none", [], "")[:PROMPT_MIN], ref)
            assert torch.equal(lp(torch.cat([other, x[:PROMPT_MIN]]), lin.w, None, "none", [], "")[-PROMPT_MIN:], ref)
        # the packing: a short lone prompt padded to PROMPT_MIN; every call a PROMPT_STEP multiple ≤ band
        assert lin._calls([2, 10], 12) == [(0, 2, 0), (2, 12, PROMPT_MIN - 10)]
        for sizes in ([300, 300], [64] * 15, [7, 130, 1, 500]):
            calls, total = lin._calls([3, *sizes], 3 + sum(sizes)), sum(sizes)
            assert calls[0] == (0, 3, 0) and len(calls) == 1 + -(-total // lin.band)
            assert calls[1][0] == 3 and calls[-1][1] == 3 + total
            assert all(PROMPT_MIN <= z - a + p <= lin.band and (z - a + p) % PROMPT_STEP == 0 for a, z, p in calls[1:])


def test_bf16_probe_does_not_depend_on_the_global_rng(monkeypatch):
    """The capability probe once used unseeded random inputs with an element-wise tolerance and failed
    for ~1 % of RNG states, silently sending a server to the slower fp32 path. The probe runs wherever
    the bf16 ops do: on a CPU without AMX too, told it has AMX. Cleared before each call (it is cached)."""
    from llmchain.infer import forward

    _need_bf16_ops()
    amx = forward._has_amx()
    monkeypatch.setattr(forward, "_has_amx", lambda: True)
    answers = set()
    try:
        for seed in range(40):
            forward.bf16_supported.cache_clear()
            torch.manual_seed(seed)
            answers.add(forward.bf16_supported())
    finally:
        forward.bf16_supported.cache_clear()
    assert answers == {True}
    monkeypatch.undo()
    assert forward.bf16_supported() == amx  # the engine picks bf16 by itself on AMX only


def test_a_dead_engine_process_ends_its_requests_and_says_why(serve_model_dir):
    d = serve_model_dir()
    eng = EngineProcess(EngineSpec(str(d), max_batch_size=2, threads=1)).start()
    try:
        h = eng.submit([1, 2, 3], SamplingParams(max_tokens=10_000, temperature=0, ignore_eos=True))
        first = next(h.iter_events(timeout=60))  # generating...
        assert first.token_ids
        eng._proc.kill()  # ...when the engine process dies (OOM killer, segfault)
        list(h.iter_events(timeout=30))  # the stream ends instead of hanging
        deadline = time.time() + 30
        while eng.error is None and time.time() < deadline:
            time.sleep(0.01)
        assert "engine process" in str(eng.error)
        with pytest.raises(RuntimeError, match="engine has failed"):
            eng.submit([1, 2, 3], SamplingParams(max_tokens=2))
    finally:
        eng.stop()
