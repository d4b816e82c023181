"""Per-phone next-token loss sums of one stacked forward pass.

The phone's trainer (:func:`fedlora.client.trainer.train_lora`) minimises the token-weighted
mean cross-entropy of its batch, ``Σ token losses / predicted tokens``. The vectorized
trainer needs, for each phone in the stack, the *sum* of its token losses; dividing by the
phone's token count and adding over phones gives a total whose gradient with respect to
phone ``k``'s factors is exactly phone ``k``'s own gradient (the phones' parameters are
disjoint and rows never mix in a causal LM).

Output-head trimming: most of the vocabulary projection's work in a batch of short private
texts goes to positions that are never scored (padding, filler rows, each row's last token).
A forward pre-hook on the model's output embedding keeps only the positions whose next token
is a target, so the head, the float32 logits and the softmax cost scale with real tokens, not
with ``rows × padded width``. The scored positions see the same hidden states, so the loss is
the same; models that do not expose ``get_output_embeddings`` (or reshape logits after the
head) use the full-logits path.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from fedlora.client.text_batches import IGNORE_INDEX
from fedlora.simulations.vectorized_batches import StackedBatch

_NOT_TRIMMABLE = (
    "this model does not take a trimmed output head (it reshapes the head's result); "
    "use VectorizedLoraTrainer(..., trim_head=False)"
)


def _output_head(model: torch.nn.Module) -> torch.nn.Module | None:
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    return head if isinstance(head, torch.nn.Module) else None


def _trimmed_logits(
    model: torch.nn.Module, head: torch.nn.Module, batch: StackedBatch, scored: torch.Tensor
) -> torch.Tensor:
    def keep_scored(_module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        hidden = args[0]
        return (hidden[scored], *args[1:])

    handle = head.register_forward_pre_hook(keep_scored)
    try:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    except RuntimeError as exc:
        raise RuntimeError(f"{_NOT_TRIMMABLE}: {exc}") from exc
    finally:
        handle.remove()
    logits: torch.Tensor = out.logits
    if logits.dim() != 2:
        raise RuntimeError(_NOT_TRIMMABLE)
    return logits.float()


def phone_loss_sums(
    model: torch.nn.Module, batch: StackedBatch, *, trim_head: bool = True
) -> torch.Tensor:
    """``(K,)`` sums of next-token cross-entropy over each phone's rows in the batch."""
    labels = batch.labels[:, 1:]
    width = batch.input_ids.shape[1]
    row_phone = batch.row_phone
    head = _output_head(model) if trim_head else None
    if head is not None:
        targets_mask = labels != IGNORE_INDEX
        scored = F.pad(targets_mask, (0, 1))  # position t is scored if token t+1 is a target
        logits = _trimmed_logits(model, head, batch, scored)
        token_loss = F.cross_entropy(logits, labels[targets_mask], reduction="none")
        phone = row_phone.unsqueeze(1).expand_as(targets_mask)[targets_mask]
    else:
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        logits = out.logits[:, :-1].float()
        token_loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="none",
        )
        phone = row_phone.repeat_interleave(width - 1)
    zeros = torch.zeros(batch.num_phones, dtype=token_loss.dtype, device=token_loss.device)
    return zeros.index_add(0, phone, token_loss)
