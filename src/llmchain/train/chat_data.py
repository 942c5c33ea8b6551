"""Chat/instruction data for SFT: records → messages → token ids with an assistant-only loss mask.

Three record formats, detected per file from the first record (or named with `--format`):

- `messages` (OpenAI): `{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}`
- `alpaca`: `{"instruction", "input", "output"}` (JSONL, or a JSON array as in the Alpaca repo)
- `prompt_completion`: `{"prompt", "completion"}`

Each example is rendered with the tokenizer's chat template — the same one the server uses — and
tokenized piece by piece: the text before each assistant turn (up to and including the generation
prompt, e.g. `<|im_start|>assistant\\n`) is a prompt piece, the assistant's content with its end-of-turn
marker (`...<|im_end|>`) is a loss piece. Tokenizing the pieces separately is exactly what happens at
inference (the server tokenizes the prompt, the model emits the reply), so the mask is exact by
construction. Malformed records are rejected with a reason, never silently dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmchain.errors import DataError, UserError

FORMATS = ("messages", "alpaca", "prompt_completion")
ROLES = ("system", "user", "assistant")


def detect_format(record: dict[str, Any]) -> str | None:
    """The format of one record, or None when its fields match none."""
    if "messages" in record:
        return "messages"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    return None


def to_messages(record: dict[str, Any], fmt: str, system_prompt: str | None = None) -> list[dict[str, str]]:
    """The record as chat messages; ValueError (the reason) when it is malformed for `fmt`."""
    if fmt == "messages":
        msgs = record.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise ValueError("'messages' must be a non-empty list")
        out = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise ValueError(f"messages[{i}] needs a role ({'/'.join(ROLES)}) and a string content")
            out.append({"role": m["role"], "content": m["content"]})
    elif fmt == "alpaca":
        instruction, inp, output = record.get("instruction"), record.get("input") or "", record.get("output")
        if not isinstance(instruction, str) or not instruction.strip() or not isinstance(output, str):
            raise ValueError("needs a non-empty string 'instruction' and a string 'output'")
        if not isinstance(inp, str):
            raise ValueError("'input' must be a string")
        user = instruction.strip() + (f"\n\n{inp.strip()}" if inp.strip() else "")
        out = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    elif fmt == "prompt_completion":
        prompt, completion = record.get("prompt"), record.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise ValueError("needs string 'prompt' and 'completion'")
        out = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
    else:
        raise ValueError(f"unknown format {fmt!r}")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in out):
        raise ValueError("no non-empty assistant message to learn from")
    if system_prompt and out[0]["role"] != "system":
        out.insert(0, {"role": "system", "content": system_prompt})
    return out


@dataclass
class ChatData:
    """Examples of one file as message lists, the format found, and the rejected records."""

    path: Path
    format: str
    examples: list[list[dict[str, str]]]
    rejected: list[dict[str, Any]] = field(default_factory=list)


def _records(path: Path) -> list[tuple[int, Any]]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):  # a JSON array of records (Alpaca's own files)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
        return list(enumerate(data, 1))
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            out.append((n, ValueError(f"invalid JSON ({e.msg})")))
    return out


def read_chat_data(path: str | Path, fmt: str = "auto", system_prompt: str | None = None,
                   strict: bool = False) -> ChatData:  # fmt: skip
    """Read a JSONL file (or JSON array) of chat/instruction records.

    Raises UserError for a missing/empty file or an undetectable format; DataError for the first bad
    record under `strict`; otherwise bad records are returned in `.rejected` with line and reason.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    records = _records(path)
    if not records:
        raise UserError(f"{path}: the file is empty")
    if fmt == "auto":
        first = next((r for _, r in records if isinstance(r, dict)), None)
        fmt = detect_format(first) if first is not None else None
        if fmt is None:
            keys = ", ".join(sorted(first)) if first else "none"
            raise UserError(f"{path}: cannot tell the record format from the fields ({keys}); expected "
                            "'messages', 'instruction'+'output' or 'prompt'+'completion' (or pass --format)")
    examples, rejected = [], []
    for n, rec in records:
        try:
            if isinstance(rec, Exception):
                raise rec
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
            examples.append(to_messages(rec, fmt, system_prompt))
        except ValueError as e:
            if strict:
                raise DataError(f"{path}:{n}: {e} (drop --strict to skip such records)") from None
            rejected.append({"file": str(path), "line": n, "reason": str(e)})
    if not examples:
        raise UserError(f"{path}: no usable {fmt} records (all {len(rejected)} rejected; first: "
                        f"{rejected[0]['reason'] if rejected else '-'})")
    return ChatData(path, fmt, examples, rejected)


# --- rendering ------------------------------------------------------------------------------------


def render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The chat template applied to `messages`, as text (what the server renders for a prompt)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def check_chat_template(tokenizer: Any, where: str) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{where}: the tokenizer has no chat_template (tokenizer_config.json); SFT renders "
                        "examples with it so that training matches serving")


def tokenize_example(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[bool]]:
    """(token ids, loss mask): the mask is True exactly on the assistant turns' tokens (content + end marker).

    Raises UserError when the template renders a conversation so that a prefix of it is not a
    prefix of the whole (then no exact mask exists).
    """
    pieces: list[tuple[str, bool]] = []
    done = ""  # the text rendered so far
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render(tokenizer, messages[: i + 1])
        if not prompt.startswith(done) or not upto.startswith(prompt):
            raise UserError("the chat template does not render conversations as growing prefixes; "
                            "cannot find the assistant tokens")
        reply = upto[len(prompt):]
        answer = reply.rstrip()  # the turn's trailing newline belongs to the layout, not to the answer
        pieces += [(prompt[len(done):], False), (answer, True)]
        done = prompt + answer
    full = render(tokenizer, messages)
    if not full.startswith(done):
        raise UserError("the chat template does not render conversations as growing prefixes")
    pieces.append((full[len(done):], False))
    ids: list[int] = []
    mask: list[bool] = []
    for text, is_answer in pieces:
        if text:
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            mask += [is_answer] * len(piece)
    return ids, mask


@dataclass
class Encoded:
    """Tokenized examples (ids + assistant mask) and what happened to the ones that did not fit."""

    ids: list[list[int]]
    masks: list[list[bool]]
    truncated: int = 0
    dropped: int = 0  # too long (too_long="drop"), or nothing of the answer left after truncation
    source_index: list[int] = field(default_factory=list)  # example index of each kept entry

    @property
    def tokens(self) -> int:
        return sum(len(x) for x in self.ids)

    @property
    def loss_tokens(self) -> int:
        return sum(sum(m) for m in self.masks)


def encode_examples(tokenizer: Any, examples: list[list[dict[str, str]]], max_len: int, too_long: str) -> Encoded:
    """Tokenize every example; longer than `max_len` tokens → truncated (keeping the start) or dropped."""
    enc = Encoded([], [])
    for n, messages in enumerate(examples):
        ids, mask = tokenize_example(tokenizer, messages)
        if len(ids) > max_len:
            if too_long == "drop":
                enc.dropped += 1
                continue
            ids, mask = ids[:max_len], mask[:max_len]
            enc.truncated += 1
        if sum(mask[1:]) == 0:  # the first token is never a target: nothing left to learn from
            enc.dropped += 1
            continue
        enc.ids.append(ids)
        enc.masks.append(mask)
        enc.source_index.append(n)
    return enc


def pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group example indices into rows of at most `capacity` tokens (first-fit decreasing; deterministic)."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, room in enumerate(free):
            if lengths[i] <= room:
                rows[r].append(i)
                free[r] -= lengths[i]
                break
        else:
            rows.append([i])
            free.append(capacity - lengths[i])
    return rows
