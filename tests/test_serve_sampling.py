"""Sampling, stop strings and incremental detokenizing: the per-sequence pieces of the serve engine."""

from __future__ import annotations

import random

import pytest
import torch

from llmchain.infer.sampling import IncrementalDetokenizer, Sampler, SamplingParams, StopStringFilter


def run_stop(stops, pieces):
    f = StopStringFilter(stops)
    out, stopped = [], False
    for p in pieces:
        text, stopped = f.push(p)
        out.append(text)
        if stopped:
            break
    if not stopped:
        out.append(f.flush())
    return "".join(out), stopped, out


def test_stop_string_split_across_tokens_is_found_and_never_emitted():
    text, stopped, chunks = run_stop(["\nUser:"], ["Hello", " there", "\nUs", "er", ": more"])
    assert stopped and text == "Hello there"
    assert all("\n" not in c for c in chunks)  # the partial "\nUs" was held back, never shown


def test_partial_stop_that_does_not_complete_is_released():
    text, stopped, _ = run_stop(["STOP"], ["ab", "ST", "OK", " done"])
    assert not stopped and text == "abSTOK done"


def test_earliest_of_several_stops_wins_and_stop_inside_one_token():
    text, stopped, _ = run_stop(["xyz", "b c"], ["a b cxyz"])
    assert stopped and text == "a "


def test_text_without_stops_streams_unchanged():
    assert run_stop([], ["a", "b"])[0] == "ab"


class _BytesTok:
    """A tokenizer whose tokens are single bytes (so characters can span tokens)."""

    def decode(self, ids, **kw):
        return bytes(ids).decode("utf-8", errors="replace")


def test_detokenizer_waits_for_complete_utf8_characters():
    d = IncrementalDetokenizer(_BytesTok())
    ids = list("héllo 世界".encode())
    deltas = [d.push(i) for i in ids] + [d.flush()]
    assert "".join(deltas) == "héllo 世界"
    assert all("\ufffd" not in x for x in deltas)


def test_detokenizer_streams_invalid_bytes_instead_of_stalling():
    """A model that keeps emitting bytes that are not UTF-8 (as random weights do) must still stream:
    only the last, possibly half, character waits; the deltas add up to the full decode."""
    d = IncrementalDetokenizer(_BytesTok())
    ids = [0xE2] * 10 + list("ok €".encode()) + [0x82, 0xFF, 0xE2, 0x82]
    deltas = [d.push(i) for i in ids]
    assert deltas[1] == "\ufffd" and all(x == "\ufffd" for x in deltas[1:10])  # one token behind, not stalled
    assert "".join(deltas) + d.flush() == bytes(ids).decode("utf-8", errors="replace")


def test_detokenizer_deltas_add_up_on_random_bytes():
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.choice([rng.randrange(256), *"é世😀a ".encode()]) for _ in range(rng.randrange(1, 30))]
        d = IncrementalDetokenizer(_BytesTok())
        assert "".join(d.push(i) for i in ids) + d.flush() == bytes(ids).decode("utf-8", errors="replace")


def test_sampler_greedy_topk1_and_seeds():
    logits = torch.randn(50, generator=torch.Generator().manual_seed(1))
    best = int(logits.argmax())
    assert Sampler(SamplingParams(temperature=0), [], 50).sample(logits) == best
    assert Sampler(SamplingParams(temperature=1.5, top_k=1), [], 50).sample(logits) == best
    draws = lambda seed: [Sampler(SamplingParams(seed=seed), [], 50).sample(logits) for _ in range(5)]  # noqa: E731
    assert draws(7) == draws(7)
    s = Sampler(SamplingParams(seed=3), [], 50)
    assert len({s.sample(logits) for _ in range(50)}) > 3  # temperature 1 over 50 tokens really samples


def test_top_p_and_min_p_keep_only_the_head():
    logits = torch.tensor([5.0, 4.9, 0.0, -1.0, -2.0])
    for params in (SamplingParams(top_p=0.5, seed=0), SamplingParams(min_p=0.5, seed=0)):
        s = Sampler(params, [], 5)
        assert {s.sample(logits) for _ in range(200)} <= {0, 1}


def test_penalties_steer_away_from_seen_tokens():
    logits = torch.tensor([2.0, 1.9, 0.0])
    rep = Sampler(SamplingParams(temperature=0, repetition_penalty=2.0), [0], 3)
    assert rep.sample(logits) == 1  # token 0 is in the prompt: 2.0/2 < 1.9
    freq = Sampler(SamplingParams(temperature=0, frequency_penalty=1.0), [], 3)
    freq.observe(0)
    assert freq.sample(logits) == 1
    pres = Sampler(SamplingParams(temperature=0, presence_penalty=0.5), [], 3)
    pres.observe(1)
    assert pres.sample(logits) == 0


@pytest.mark.parametrize("field,value", [("temperature", -1), ("top_p", 0), ("n", 0), ("logprobs", 30),
                                         ("stop", [""]), ("max_tokens", 0)])  # fmt: skip
def test_invalid_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value}).validate()


def test_detokenizer_on_a_fast_tokenizer_gives_its_decode(tmp_path):
    """The Rust decoder path: the deltas add up to what `tokenizer.decode` gives (special tokens
    skipped), and no delta ends in half a character, with multi-byte text split across BPE tokens."""
    from transformers import AutoTokenizer

    from serve_fixtures import make_tokenizer_dir

    tok = AutoTokenizer.from_pretrained(make_tokenizer_dir(tmp_path / "tok", None))
    text = "First Citizen: héllo 世界 — before we proceed any further, hear me speak.<|endoftext|> ünd"
    ids = tok.encode(text, add_special_tokens=False)
    d = IncrementalDetokenizer(tok)
    assert d._backend is not None
    deltas = [d.push(i) for i in ids] + [d.flush()]
    assert "".join(deltas) == tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert "世界" in "".join(deltas) and "<|endoftext|>" not in "".join(deltas)
    assert all("\ufffd" not in x for x in deltas)
    rng = random.Random(0)  # any ids at all (a random model's output): still its decode, and no stall
    ids = [rng.randrange(tok.vocab_size) for _ in range(300)]
    d = IncrementalDetokenizer(tok)
    deltas = [d.push(i) for i in ids]
    assert "".join(deltas) + d.flush() == tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    assert sum(1 for x in deltas if x) > 200
