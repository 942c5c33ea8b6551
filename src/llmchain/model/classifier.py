"""Text classifiers: load a classifier dir and predict labels with scores.

A classifier dir is a Hugging Face dir that `AutoModelForSequenceClassification` opens: `config.json`
with `id2label`/`label2id`, `model.safetensors`, tokenizer files, `manifest.json`. Two kinds exist:

- an encoder (BERT family, e.g. MiniLM) — run through transformers itself;
- one of our decoders with a classification head on the last real token (`DecoderClassifier`), saved
  with HF's `LlamaForSequenceClassification` layout (trunk `model.*` + `score.weight`) so transformers
  opens it too.

`load_classifier(dir).predict(texts)` is what `llmchain predict`, the server's /v1/classify and the
eval stage use; nothing here imports `llmchain.train`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from llmchain.artifacts import atomic_dir, write_manifest
from llmchain.errors import UserError
from llmchain.model.llama import Llama, LlamaConfig, LlamaModel

DECODER_TYPES = ("llama", "qwen2", "mistral")
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "vocab.json", "merges.txt", "vocab.txt",
)  # fmt: skip


POOLINGS = ("last", "mean")


class DecoderClassifier(nn.Module):
    """Our decoder trunk + a linear head on the hidden state of each sequence's last real token
    (`pooling="last"`) or on the mean of the hidden states of its real tokens (`pooling="mean"`).

    Inputs are right-padded; causal attention means padding after the last real token cannot change
    the hidden states of real tokens, so no padding mask is needed inside the trunk. The pooling is
    saved in config.json as `classifier_pooling` (transformers' LlamaForSequenceClassification knows
    last-token pooling only: a mean-pooled dir is ours to load).
    """

    def __init__(self, config: LlamaConfig, num_labels: int, pooling: str = "last"):
        super().__init__()
        self.config, self.num_labels, self.pooling = config, num_labels, _check_pooling(pooling)
        self.model = LlamaModel(config)
        self.score = nn.Linear(config.hidden_size, num_labels, bias=False)
        nn.init.normal_(self.score.weight, std=config.initializer_range)

    @classmethod
    def from_causal_lm(cls, lm: Llama, num_labels: int, pooling: str = "last") -> DecoderClassifier:
        """Reuse the trunk of a causal LM (its weights, not a copy); the LM head is dropped."""
        clf = cls.__new__(cls)
        nn.Module.__init__(clf)
        clf.config, clf.num_labels, clf.pooling = lm.config, num_labels, _check_pooling(pooling)
        clf.model = lm.model
        clf.score = nn.Linear(lm.config.hidden_size, num_labels, bias=False)
        nn.init.normal_(clf.score.weight, std=lm.config.initializer_range)
        return clf.to(lm.lm_head.weight.device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, num_labels)."""
        h = self.model(input_ids)
        if self.pooling == "mean":
            if attention_mask is None:
                return self.score(h.mean(1))
            mask = attention_mask.to(h.dtype).unsqueeze(-1)
            return self.score((h * mask).sum(1) / mask.sum(1).clamp(min=1))
        if attention_mask is None:
            last = torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, device=input_ids.device)
        else:
            last = attention_mask.long().sum(-1).clamp(min=1) - 1
        return self.score(h[torch.arange(h.shape[0], device=h.device), last])


def _check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise UserError(f"unknown classifier pooling {pooling!r}; choose one of: {', '.join(POOLINGS)}")
    return pooling


def classifier_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits (B, K) of either kind of classifier."""
    if isinstance(model, DecoderClassifier):
        return model(input_ids, attention_mask)
    return model(input_ids=input_ids, attention_mask=attention_mask).logits


def pad_batch(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists to the longest: (input_ids, attention_mask), both (B, T) int64."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def save_classifier(
    model: nn.Module,
    tokenizer: Any,
    out_dir: str | Path,
    id2label: dict[int, str],
    *,
    manifest: dict[str, Any] | None = None,
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Write a classifier dir atomically (weights, config with id2label/label2id, tokenizer, manifest).

    An encoder is saved by transformers; a `DecoderClassifier` as `LlamaForSequenceClassification`.
    """
    id2label = {int(k): v for k, v in id2label.items()}
    label2id = {v: k for k, v in id2label.items()}
    with atomic_dir(out_dir) as tmp:
        if isinstance(model, DecoderClassifier):
            from safetensors.torch import save_file

            state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
            hf = model.config.to_hf_dict()
            arch = "Qwen2ForSequenceClassification" if model.config.model_type == "qwen2" else \
                "LlamaForSequenceClassification"
            pad = model.config.pad_token_id
            if pad is None:
                pad = getattr(tokenizer, "pad_token_id", None)
            hf.update(architectures=[arch], id2label={str(k): v for k, v in id2label.items()}, label2id=label2id,
                      num_labels=len(id2label), pad_token_id=pad, dtype="float32", torch_dtype="float32")
            if model.pooling != "last":
                hf["classifier_pooling"] = model.pooling
            save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
            (tmp / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
        else:
            model.config.id2label, model.config.label2id = id2label, label2id
            model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer_dir is not None:
            _copy_tokenizer(Path(tokenizer_dir), tmp)
        else:
            tokenizer.save_pretrained(tmp)
        m = dict(manifest or {})
        n_params = sum(p.numel() for p in model.parameters())
        write_manifest(
            tmp, m.pop("kind", "classifier"), inputs=m.pop("inputs", None), config=m.pop("config", None),
            counts={"parameters": n_params, "labels": len(id2label), **m.pop("counts", {})},
            extra={"labels": [id2label[i] for i in sorted(id2label)], **m},
        )
    return Path(out_dir)


def _load_decoder_classifier(model_dir: Path, hf: dict[str, Any]) -> DecoderClassifier:
    from safetensors.torch import load_file

    config = replace(LlamaConfig.from_hf_dict(hf), torch_dtype="float32")
    model = DecoderClassifier(config, len(hf["id2label"]), hf.get("classifier_pooling", "last"))
    state: dict[str, torch.Tensor] = {}
    for f in sorted(model_dir.glob("model*.safetensors")):
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(f"{model_dir}: weights do not match config.json (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]})")
    return model.float()


class Classifier:
    """A loaded classifier: `.labels` (class names in id order) and `.predict(texts)`.

    `threshold` (two labels only; config.json's `classifier_threshold`, chosen on the validation set by
    `finetune classify --threshold val`): the second label is predicted when its probability is at least
    this, instead of the more probable label.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, labels: list[str], max_length: int,
                 model_dir: Path | None = None, device: str | torch.device = "cpu", threshold: float | None = None):
        self.model, self.tokenizer, self.labels = model.eval(), tokenizer, labels
        self.max_length, self.model_dir, self.device = max_length, model_dir, torch.device(device)
        if threshold is not None and len(labels) != 2:
            raise UserError(f"{model_dir}: a decision threshold needs two labels; this classifier has {len(labels)}")
        self.threshold = threshold
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (tokenizer.eos_token_id or 0)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, truncated to the model's maximum length (an empty text gets one pad token)."""
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        return [x or [self.pad_id] for x in ids]

    @torch.inference_mode()
    def predict_proba(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """Class probabilities (N, K) in input order; texts are batched by length to waste little padding."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            return torch.empty(0, len(self.labels))
        ids = self.encode(texts)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out = torch.empty(len(ids), len(self.labels))
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            x, mask = pad_batch([ids[i] for i in chunk], self.pad_id)
            logits = classifier_logits(self.model, x.to(self.device), mask.to(self.device))
            out[chunk] = logits.float().softmax(-1).cpu()
        return out

    def predict(self, texts: list[str], batch_size: int = 32) -> list[dict[str, Any]]:
        """One `{"label": name, "scores": {name: probability}}` per text, in input order."""
        probs = self.predict_proba(texts, batch_size)
        return [
            {"label": self.labels[int(i)],
             "scores": {n: float(v) for n, v in zip(self.labels, p.tolist(), strict=True)}}
            for i, p in zip(decide(probs, self.threshold), probs, strict=True)
        ]


def decide(probs: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
    """Predicted class ids (N,) from probabilities (N, K): argmax, or with two classes and a `threshold`,
    class 1 where its probability is at least the threshold."""
    if threshold is None:
        return probs.argmax(-1)
    return (probs[:, 1] >= threshold).long()


def load_classifier(model_dir: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """Load a classifier dir (ours or any local HF sequence-classification dir), in eval mode, fp32.

    Raises UserError when the dir is missing, is not a classifier (no `id2label` / not a
    `...ForSequenceClassification`), or has no tokenizer. Never reaches a model hub.
    """
    model_dir = Path(model_dir)
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{model_dir}: not a model directory (no config.json)")
    hf = json.loads(cfg_path.read_text(encoding="utf-8"))
    archs = hf.get("architectures") or []
    if not hf.get("id2label") or not any(a.endswith("ForSequenceClassification") for a in archs):
        raise UserError(f"{model_dir}: not a classifier (config.json has no id2label or "
                        f"ForSequenceClassification architecture); train one with `llmchain finetune classify`")
    labels = [hf["id2label"][k] for k in sorted(hf["id2label"], key=int)]
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"{model_dir}: cannot load the tokenizer ({str(e).splitlines()[0]})") from None
    if hf.get("model_type") in DECODER_TYPES:
        model: nn.Module = _load_decoder_classifier(model_dir, hf)
        max_len = hf.get("max_position_embeddings", 2048)
    else:
        from transformers import AutoModelForSequenceClassification
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True,
                                                                       dtype=torch.float32)
        except (OSError, ValueError) as e:
            raise UserError(f"{model_dir}: cannot load the model ({str(e).splitlines()[0]})") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        max_len = hf.get("max_position_embeddings", 512)
    tok_max = getattr(tokenizer, "model_max_length", None) or max_len
    return Classifier(model.to(device), tokenizer, labels, int(min(max_len, tok_max)), model_dir, device,
                      hf.get("classifier_threshold"))
