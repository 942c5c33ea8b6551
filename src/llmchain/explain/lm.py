"""Explanations for language models: per-token surprisal of a text, and the attribution of a generated
continuation to the prompt's tokens (layer integrated gradients on the word embeddings, Captum).

The LM is one of our `Llama`s (any model dir `load_model` opens). A token's surprisal is
−log₂ p(token | the tokens before it), in bits; the first token has no context and gets none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from llmchain.errors import UserError


@dataclass
class LMExplanation:
    text: str
    ids: list[int]
    spans: list[tuple[int, int]]
    scores: dict[str, list[float | None]] = field(default_factory=dict)
    prompt_tokens: int = 0  # for an attribution: the first `prompt_tokens` tokens are the prompt
    continuation: str | None = None
    continuation_ids: list[int] = field(default_factory=list)
    ig_delta: float | None = None
    truncated_from: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text, "continuation": self.continuation, "continuation_ids": self.continuation_ids,
            "prompt_tokens": self.prompt_tokens,
            "truncated": self.truncated_from is not None, "tokens_total": self.truncated_from or len(self.ids),
            "tokens": [{"token": self.text[a:b], "id": i, "span": [a, b],
                        **{m: (None if v[k] is None else round(v[k], 6)) for m, v in self.scores.items()}}
                       for k, (i, (a, b)) in enumerate(zip(self.ids, self.spans, strict=True))],
            "ig_convergence_delta": self.ig_delta,
        }  # fmt: skip


def _encode(tokenizer, text: str, max_len: int) -> tuple[list[int], list[tuple[int, int]], int | None]:
    if not text or not text.strip():
        raise UserError("the text is empty; nothing to explain")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, spans = list(enc["input_ids"]), [tuple(map(int, s)) for s in enc["offset_mapping"]]
    full = len(ids)
    if full > max_len:  # keep the start: a heatmap reads left to right
        ids, spans = ids[:max_len], spans[:max_len]
    return ids, spans, full if full > max_len else None


def surprisal(model, tokenizer, text: str) -> LMExplanation:
    """Bits of surprisal per token of `text` (None for the first), truncated to the context."""
    ids, spans, cut = _encode(tokenizer, text, model.config.max_position_embeddings)
    with torch.inference_mode():
        logits, _ = model(torch.tensor([ids]))
        logp = logits[0, :-1].float().log_softmax(-1)
        nats = -logp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
    bits = (nats / torch.log(torch.tensor(2.0))).tolist()
    return LMExplanation(text, ids, spans, {"surprisal_bits": [None, *bits]}, truncated_from=cut)


def attribute_continuation(model, tokenizer, prompt: str, max_new_tokens: int = 20,
                           n_steps: int = 32) -> LMExplanation:  # fmt: skip
    """Generate a greedy continuation of `prompt`, then attribute its log-probability (the sum over its
    tokens) to the prompt's tokens by layer IG. The baseline replaces the prompt's tokens by the pad
    (or EOS) token and leaves the continuation as it is, so the attributions land on the prompt only
    and add up to log p(continuation | prompt) − log p(continuation | baseline)."""
    from captum.attr import LayerIntegratedGradients

    limit = model.config.max_position_embeddings - max_new_tokens
    if limit < 1:
        raise UserError(f"--max-new-tokens {max_new_tokens}: leaves no room for a prompt in the context")
    ids, spans, cut = _encode(tokenizer, prompt, limit)
    from llmchain.infer.engine import Engine, stop_token_ids
    from llmchain.infer.sampling import SamplingParams

    # The continuation comes from the inference engine (the one way llmchain generates), in fp32 so it is
    # the argmax of the very forward the attributions then differentiate.
    eos = tokenizer.eos_token_id
    stops = stop_token_ids(tokenizer, model.config)
    engine = Engine(model, tokenizer, max_batch_size=1, dtype="float32", eos_token_ids=stops)
    (c,) = engine.generate([list(ids)], SamplingParams(max_tokens=max_new_tokens, temperature=0))[0]
    cont = [t for t in c.token_ids if t not in stops]
    seq = list(ids) + cont
    if not cont:
        raise UserError("the model ended the text at once (EOS); no continuation to attribute")
    n = len(ids)

    def forward(x: torch.Tensor) -> torch.Tensor:
        logits, _ = model(x)
        logp = logits[:, n - 1 : -1].float().log_softmax(-1)
        target = x.new_tensor(cont)[None].expand(x.shape[0], -1)
        return logp.gather(-1, target[..., None])[..., 0].sum(-1)

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
    x = torch.tensor([seq])
    base = torch.tensor([[pad] * n + cont])
    lig = LayerIntegratedGradients(forward, model.model.embed_tokens)
    with torch.enable_grad():
        attr, delta = lig.attribute(x, baselines=base, n_steps=n_steps, internal_batch_size=n_steps,
                                    return_convergence_delta=True)  # fmt: skip
    scores = attr.sum(-1)[0, :n].detach().tolist()
    text = tokenizer.decode(cont, skip_special_tokens=True)
    return LMExplanation(prompt, ids, spans, {"ig": scores}, prompt_tokens=n, continuation=text,
                         continuation_ids=cont, ig_delta=float(delta.abs().item()), truncated_from=cut)  # fmt: skip
