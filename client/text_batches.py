"""Private text → token batches for causal-LM training and evaluation.

Each example becomes ``<s> text </s>``, truncated to ``max_len`` tokens
(:mod:`fedlora.client.tokens`); a batch is padded on
the right and padding positions get label -100 so they never enter the loss. Batching is
deterministic given the seed, so a resumed run sees the same batches in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# the token types live in the torch-free tokens.py; re-exported for the training code
from fedlora.client.tokens import TokenizedTexts as TokenizedTexts
from fedlora.client.tokens import tokenize_texts as tokenize_texts

IGNORE_INDEX = -100


def collate(tok: TokenizedTexts, indices: Sequence[int]) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` for the given rows."""
    rows = [tok.ids[i] for i in indices]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def batch_schedule(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Row indices for each of ``steps`` batches: epochs of seeded permutations."""
    rng = np.random.default_rng(seed)
    order: list[int] = []
    out: list[list[int]] = []
    bs = min(batch_size, n)
    for _ in range(steps):
        if len(order) < bs:
            order.extend(int(i) for i in rng.permutation(n))
        out.append(order[:bs])
        del order[:bs]
    return out


def predicted_tokens(batch: dict[str, torch.Tensor]) -> int:
    """How many next-token predictions a batch contributes to the loss."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def summed_token_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum (not mean) of next-token cross-entropies over a batch's labelled positions.

    Summing lets a step divide by the token count of the *whole* batch, so splitting it
    into micro-batches (accumulation) does not change the loss or the gradient.
    """
    out = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    )
    logits = out.logits[:, :-1].float()
    labels = batch["labels"][:, 1:].to(logits.device)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


def token_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[float, int]:
    """Sum of next-token losses and the number of predicted tokens in a batch."""
    device = next(model.parameters()).device
    return float(summed_token_loss(model, to_device(batch, device))), predicted_tokens(batch)


def evaluate_loss(model: torch.nn.Module, tok: TokenizedTexts, batch_size: int = 32) -> float:
    """Token-weighted mean next-token loss over all rows (the held-out metric)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(tok), batch_size):
            batch = collate(tok, range(start, min(start + batch_size, len(tok))))
            s, c = token_loss_sum(model, batch)
            total += s
            count += c
    if was_training:
        model.train()
    return total / max(count, 1)


def longest_rows(tok: TokenizedTexts, k: int) -> list[int]:
    """Indices of the ``k`` longest examples (repeated if there are fewer): a worst case."""
    order = sorted(range(len(tok)), key=lambda i: -len(tok.ids[i]))
    return [order[i % len(order)] for i in range(k)]
