"""Train only the word-embedding rows a data set uses, with the same math as training the whole table.

A BERT-style encoder's word embedding is about half its parameters (MiniLM: 11.7M of 22.7M), and a
fine-tuning set touches a fraction of its rows; updating all of them every step (gradient, norm,
AdamW) is most of the optimizer's time. `TrainRowsEmbedding` keeps the untouched rows out of the
optimizer and applies their weight decay lazily — see its docstring for why that is exact.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class TrainRowsEmbedding(nn.Embedding):
    """A word embedding whose optimizer sees only the rows of tokens that occur in the training data.

    AdamW's update of a row that never gets a gradient (its moments stay 0) is exactly its weight
    decay, p ← p·(1 − lr·wd); so instead of a dense 30k-row gradient, norm and AdamW pass every step,
    the trained rows live in `rows` (a parameter) and the others only collect that decay as one
    pending factor (`after_optimizer_step`, called by the loop), applied when the full table is read
    (eval forward, `state_dict`). Same math as training the whole table; the only difference is the
    summation order of the gradient norm. `state_dict` and loading use the plain `weight` key, so
    checkpoints and saved models are ordinary HF dirs. Training batches must use `row_ids` only.
    """

    def __init__(self, emb: nn.Embedding, row_ids: torch.Tensor):
        nn.Module.__init__(self)
        self.num_embeddings, self.embedding_dim = emb.num_embeddings, emb.embedding_dim
        self.padding_idx, self.max_norm, self.norm_type = emb.padding_idx, emb.max_norm, emb.norm_type
        self.scale_grad_by_freq, self.sparse = emb.scale_grad_by_freq, emb.sparse
        self.weight = nn.Parameter(emb.weight.detach(), requires_grad=False)  # the full table, synced lazily
        ids = set(row_ids.tolist()) | ({self.padding_idx} if self.padding_idx is not None else set())
        self.register_buffer("row_ids", torch.tensor(sorted(ids), dtype=torch.long), persistent=False)
        row_of = torch.full((self.num_embeddings,), -1, dtype=torch.long)
        row_of[self.row_ids] = torch.arange(len(self.row_ids))
        self.register_buffer("row_of", row_of, persistent=False)
        self.rows = nn.Parameter(self.weight.detach()[self.row_ids].clone())
        self.pending = 1.0  # decay owed by the rows outside row_ids since the last sync
        self._synced = self.rows._version

    def after_optimizer_step(self, lr: float, weight_decay: float) -> None:
        self.pending *= 1.0 - lr * weight_decay

    @torch.no_grad()
    def sync(self) -> None:
        """Write the trained rows and the pending decay into the full table."""
        if self.pending != 1.0:
            self.weight.mul_(self.pending)
            self.pending = 1.0
        self.weight[self.row_ids] = self.rows.to(self.weight.dtype)
        self._synced = self.rows._version

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            if self.pending != 1.0 or self._synced != self.rows._version:
                self.sync()
            return super().forward(ids)
        rows = self.row_of[ids]
        if bool((rows < 0).any()):
            raise ValueError("TrainRowsEmbedding: a training batch holds a token outside row_ids")
        pad = int(self.row_of[self.padding_idx]) if self.padding_idx is not None else None
        return F.embedding(rows, self.rows, pad, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self.sync()
        destination[prefix + "weight"] = self.weight if keep_vars else self.weight.detach()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):  # fmt: skip
        if prefix + "weight" not in state_dict:
            missing_keys.append(prefix + "weight")
            return
        with torch.no_grad():
            self.weight.copy_(state_dict[prefix + "weight"])
            self.rows.copy_(self.weight[self.row_ids])
        self.pending, self._synced = 1.0, self.rows._version


def train_rows_only(model: nn.Module, ids: list[list[int]]) -> bool:
    """Swap an HF model's word embedding for a `TrainRowsEmbedding` over the tokens in `ids`; False if
    the model has no plain `nn.Embedding` input embedding (then nothing changes)."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if get is not None else None
    if type(emb) is not nn.Embedding:
        return False
    used = torch.unique(torch.tensor([t for row in ids for t in row], dtype=torch.long))
    model.set_input_embeddings(TrainRowsEmbedding(emb, used))
    return True
