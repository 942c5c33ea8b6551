"""Helpers of the serve tests: a tiny byte-level BPE tokenizer and a tiny random Llama, as HF dirs
(conftest's `serve_model_dir` fixture builds the model once per session); and a live uvicorn server
on 127.0.0.1 in a background thread.

Imported by tests/test_serve_*.py and conftest.py (tests/ is on sys.path under pytest's default import mode).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]


def make_tokenizer_dir(out: Path, corpus: Path | None, vocab_size: int = 400, chat_template: bool = True) -> Path:
    """Train a byte-level BPE on (a slice of) `corpus` and save it as an HF tokenizer dir."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = corpus.read_text(encoding="utf-8")[:100_000] if corpus else "To be, or not to be: that is the question.\n" * 50
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)  # fmt: skip
    tok.train_from_iterator(text.splitlines(keepends=True), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|pad|>", additional_special_tokens=["<|im_start|>", "<|im_end|>"])  # fmt: skip
    if chat_template:
        fast.chat_template = CHATML
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return out


def make_model_dir(root: Path, corpus: Path | None, *, chat_template: bool = True, seed: int = 0,
                   hidden: int = 64, layers: int = 2, max_len: int = 512) -> Path:  # fmt: skip
    """A tiny random Llama + tokenizer, saved as an HF model dir under `root`."""
    import torch

    from llmchain.model.io import save_model
    from llmchain.model.llama import Llama, LlamaConfig

    tok_dir = make_tokenizer_dir(root / "tokenizer", corpus, chat_template=chat_template)
    vocab = json.loads((tok_dir / "tokenizer.json").read_text())["model"]["vocab"]
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=hidden * 3,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=max_len, tie_word_embeddings=False, eos_token_id=0, bos_token_id=0)  # fmt: skip
    model = Llama(cfg)
    with torch.no_grad():  # a larger embedding scale makes random greedy text vary instead of looping
        model.model.embed_tokens.weight.mul_(25)
    return save_model(model, root / "model", tokenizer_dir=tok_dir)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving `app` on 127.0.0.1:<free port> in a thread, ready once /health says 200."""

    def __init__(self, app):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        import httpx

        self.thread.start()
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("server did not become healthy")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
