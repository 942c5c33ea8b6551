"""Train a byte-level BPE tokenizer (HF `tokenizers`) and save it as a `transformers`-loadable dir.

Byte-level means every UTF-8 byte is in the base alphabet, so any text — English, Chinese, emoji,
control characters — encodes without unknown tokens and decodes back to exactly the same string.
No normalizer, no prefix space, no clean-up of spaces on decode: the round trip is the identity.

The saved dir holds `tokenizer.json`, `tokenizer_config.json` (special tokens and a ChatML
`chat_template`), `special_tokens_map.json` and `manifest.json`; `AutoTokenizer.from_pretrained`
opens it, and so does anything else that reads HF tokenizers (vLLM, llama.cpp's converter).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmchain.artifacts import atomic_dir, atomic_write_json, sha256_file, write_manifest
from llmchain.errors import UserError

EOS = "<|endoftext|>"  # end of a document; also bos (each packed document starts with it)
PAD = "<|pad|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"  # chat turn markers (ChatML)
SPECIAL_TOKENS = [EOS, PAD, IM_START, IM_END]  # ids 0..3, in this order
MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # every byte + the special tokens
MAX_VOCAB = 1 << 20

# ChatML, as Qwen2 and many others use it. A system turn is optional; `add_generation_prompt`
# opens the assistant's turn so the model continues it.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def iter_documents(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Documents ({"id", "text", ...}) of a prepared dir, a .jsonl(.gz) file or a .txt file, in a
    deterministic order (the data stage's reader). UserError when the path is missing or malformed."""
    if not Path(path).exists():
        raise UserError(f"{path}: no such file or directory (documents: a prepared dir, .jsonl(.gz) or .txt)")
    from llmchain.data.readers import iter_documents as read_documents

    try:
        yield from read_documents(path)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def split_document(index: int, text: str, val_fraction: float, split_by: str) -> list[tuple[str, str]]:
    """[(split, text)] of document number `index`: the train/val split of `llmchain data pack`.

    split_by="documents": the whole document goes to "val" when `index` crosses a multiple of
    1 / val_fraction (an exact share, spread evenly), else to "train". split_by="chars": the first
    (1 - val_fraction) of its characters are "train", the rest "val". Pieces may be empty.
    """
    if split_by == "chars":
        cut = int(len(text) * (1 - val_fraction))
        return [("train", text[:cut]), ("val", text[cut:])]
    to_val = math.floor((index + 1) * val_fraction) > math.floor(index * val_fraction)
    return [("val" if to_val else "train", text)]


def train_tokenizer(
    docs_path: str | os.PathLike,
    vocab_size: int,
    out_dir: str | os.PathLike,
    *,
    min_frequency: int = 2,
    max_documents: int | None = None,
    model_max_length: int = 2048,
    val_fraction: float = 0.0,
    split_by: str = "documents",
    show_progress: bool = False,
) -> dict[str, Any]:
    """Train byte-level BPE on the documents at `docs_path` and save the tokenizer dir at `out_dir`.

    With `val_fraction` > 0 the tokenizer trains on the train split only: the part that `llmchain
    data pack` with the same `val_fraction` and `split_by` sends to val is left out (`split_document`),
    so no merge is learnt from validation text.

    Returns a summary (vocab size, documents, characters, path). Raises UserError for a vocabulary
    outside [MIN_VOCAB, MAX_VOCAB], a bad split, a missing/unreadable input, or input without any text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if not MIN_VOCAB <= vocab_size <= MAX_VOCAB:
        raise UserError(
            f"--vocab-size {vocab_size} is out of range: a byte-level BPE needs at least {MIN_VOCAB} "
            f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens) and at most {MAX_VOCAB}"
        )
    if min_frequency < 1:
        raise UserError(f"--min-frequency {min_frequency} must be ≥ 1")
    if not 0.0 <= val_fraction < 1.0 or split_by not in ("documents", "chars"):
        raise UserError(f"--val-fraction {val_fraction} / --split-by {split_by!r}: need 0 ≤ fraction < 1 and "
                        "documents or chars")  # fmt: skip
    if not Path(docs_path).exists():  # checked here, before the trainer starts drawing its progress bar
        raise UserError(
            f"{docs_path}: no such file or directory (documents: a prepared dir, .jsonl(.gz) or .txt)"
        )
    stats = {"documents": 0, "characters": 0}

    def texts() -> Iterator[str]:
        for i, doc in enumerate(iter_documents(docs_path)):
            if max_documents is not None and i >= max_documents:
                return
            parts = split_document(i, doc["text"], val_fraction, split_by) if val_fraction else [("train", doc["text"])]
            for split, text in parts:
                if split == "train" and text:
                    stats["documents"] += 1
                    stats["characters"] += len(text)
                    yield text

    tok = Tokenizer(models.BPE())
    # GPT-2's split regex, then bytes → printable unicode; add_prefix_space=False keeps the round trip exact.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen in training or not
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts(), trainer)
    if stats["characters"] == 0:
        raise UserError(f"{docs_path}: no text to train on (0 documents or all empty)")
    with atomic_dir(out_dir) as tmp:
        save_tokenizer_files(tok, tmp, model_max_length=model_max_length)
        counts = {"vocab_size": tok.get_vocab_size(), **stats}
        write_manifest(
            tmp,
            "tokenizer",
            inputs={"documents": docs_path},
            config={"vocab_size": vocab_size, "min_frequency": min_frequency, "max_documents": max_documents,
                    "val_fraction": val_fraction, "split_by": split_by},
            counts=counts,
        )
    return {**counts, "requested_vocab_size": vocab_size, "path": str(out_dir)}


def save_tokenizer_files(tok: Any, out_dir: Path, *, model_max_length: int = 2048) -> None:
    """Write `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` for a trained
    `tokenizers.Tokenizer` whose first ids are SPECIAL_TOKENS."""
    tok.save(str(out_dir / "tokenizer.json"))
    added = {
        str(tok.token_to_id(t)): {
            "content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True,
        }
        for t in SPECIAL_TOKENS
    }  # fmt: skip
    # Written by hand (not save_pretrained) so that transformers 4.x and 5.x both read it, and the
    # chat template sits in tokenizer_config.json where llama.cpp's converter and vLLM look for it.
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": EOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": None,
        "additional_special_tokens": [IM_START, IM_END],
        "added_tokens_decoder": added,
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,  # else decode() would rewrite " ." → "." etc.
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
    }
    atomic_write_json(out_dir / "tokenizer_config.json", config)
    atomic_write_json(
        out_dir / "special_tokens_map.json",
        {
            "bos_token": EOS,
            "eos_token": EOS,
            "pad_token": PAD,
            "additional_special_tokens": [IM_START, IM_END],
        },
    )


def check_tokenizer_dir(tokenizer_dir: str | os.PathLike) -> Path:
    """`tokenizer_dir` as a Path, or a UserError saying how to make one."""
    path = Path(tokenizer_dir)
    if not (path / "tokenizer.json").is_file():
        what = "no such directory" if not path.exists() else "no tokenizer.json in it"
        raise UserError(
            f"{path}: not a tokenizer directory ({what}); train one with `llmchain tokenizer train`"
        )
    return path


def load_tokenizer(tokenizer_dir: str | os.PathLike):
    """The tokenizer dir (ours, or a model dir carrying tokenizer files) as a
    `transformers.PreTrainedTokenizerFast`. UserError when the dir has no tokenizer.json."""
    path = check_tokenizer_dir(tokenizer_dir)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: cannot load the tokenizer ({str(e).splitlines()[0]})") from None


def tokenizer_sha256(tokenizer_dir: str | os.PathLike) -> str:
    """Hash of `tokenizer.json`: identifies the vocabulary + merges that token shards were made with."""
    return sha256_file(check_tokenizer_dir(tokenizer_dir) / "tokenizer.json")
