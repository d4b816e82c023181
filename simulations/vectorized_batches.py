"""Rows of K phones' private data, bucketed by length into forward passes.

Which phone a row belongs to is carried by ``row_phone`` (the LoRA hooks gather each row's
factors by it, see :mod:`fedlora.simulations.vectorized_layers`), so a pass may hold any rows
of any phones. That freedom is used for *length bucketing*: all rows of one optimizer step
(every phone's batch) are sorted by length and cut into passes of similar-length rows, at
most ``tokens_per_pass`` padded tokens each (:func:`plan_passes`). Private texts are short
and uneven (the default federation: median 29 tokens, max 66). Padding each phone's batch to
its own longest row — what the phone's trainer does — computes ~1.5× the real tokens, and
padding K phones' batches to one common width ~2×; length-bucketed passes pad ~1.1×. On a
CPU the base's forward/backward is compute-bound already at one phone's batch, so padding is
where most of the avoidable work is.

Within a pass, rows are right-padded to the longest with attention mask 0 and label -100,
exactly like :func:`fedlora.client.text_batches.collate`; with causal attention and masked
padding keys a row's real positions see the same inputs whatever the padding. Which rows
share a pass changes only the order of a sum, so losses and gradients agree with the phone's
own trainer to float rounding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedlora.client.text_batches import IGNORE_INDEX, TokenizedTexts

#: A forward pass's fixed cost in padded tokens' worth of work (the per-op overhead of a
#: small model's forward + backward is ≈ 10 ms on one CPU core, a token ≈ 40–80 µs).
PASS_COST_TOKENS = 256

#: ``(phone position in the chunk, row index in that phone's data)``
RowRef = tuple[int, int]


@dataclass(frozen=True)
class StackedBatch:
    """One forward pass: rows of several phones and, per row, the phone it belongs to."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    row_phone: torch.Tensor
    num_phones: int

    def to(self, device: torch.device) -> StackedBatch:
        return StackedBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.labels.to(device),
            self.row_phone.to(device),
            self.num_phones,
        )


def predicted_tokens(data: TokenizedTexts, rows: Sequence[int]) -> int:
    """Next-token targets in these rows: every token but each row's first."""
    return sum(max(len(data.ids[i]) - 1, 0) for i in rows)


def plan_passes(
    datas: Sequence[TokenizedTexts],
    rows: Mapping[int, Sequence[int]],
    tokens_per_pass: int,
    pass_cost_tokens: int = PASS_COST_TOKENS,
) -> list[list[RowRef]]:
    """Cut ``rows[k]`` of every phone ``k`` into passes of rows of similar length.

    The rows are sorted by length and split into contiguous groups that minimise the padded
    tokens computed plus ``pass_cost_tokens`` per pass (a pass's fixed cost: every op of the
    model's forward and backward), each group holding at most ``tokens_per_pass`` padded
    tokens (or a single row, if that row alone is longer). An exact O(n · rows per pass)
    dynamic programme over the sorted lengths.
    """
    refs = [(k, i) for k, phone_rows in rows.items() for i in phone_rows]
    lengths = np.array([len(datas[k].ids[i]) for k, i in refs], dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    sorted_len = np.maximum(lengths[order], 1)
    n = len(order)
    best = np.zeros(n + 1)
    start = np.zeros(n + 1, dtype=np.int64)
    for j in range(1, n + 1):
        width = int(sorted_len[j - 1])  # the longest row of any group ending at j
        first = max(0, j - max(tokens_per_pass // width, 1))
        starts = np.arange(first, j)
        cost = best[first:j] + (j - starts) * width + pass_cost_tokens
        pick = int(np.argmin(cost))
        best[j], start[j] = cost[pick], first + pick
    passes: list[list[RowRef]] = []
    j = n
    while j > 0:
        passes.append([refs[int(t)] for t in order[start[j] : j]])
        j = int(start[j])
    return passes[::-1]


def stack_rows(datas: Sequence[TokenizedTexts], refs: Sequence[RowRef]) -> StackedBatch:
    """The rows ``refs`` as one right-padded batch (input ids, attention mask, labels)."""
    if not refs:
        raise ValueError("no rows to stack")
    seqs = [datas[k].ids[i] for k, i in refs]
    width = max(len(s) for s in seqs)
    ids = np.empty((len(seqs), width), dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for r, ((k, _), seq) in enumerate(zip(refs, seqs, strict=True)):
        ids[r] = datas[k].pad_id
        ids[r, : len(seq)] = seq
        mask[r, : len(seq)] = 1
    input_ids = torch.from_numpy(ids)
    attention_mask = torch.from_numpy(mask)
    labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
    row_phone = torch.tensor([k for k, _ in refs], dtype=torch.long)
    return StackedBatch(input_ids, attention_mask, labels, row_phone, len(datas))
