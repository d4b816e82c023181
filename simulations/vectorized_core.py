"""What one batch of the vectorized-phones service does, on the frozen base (torch).

A worker of the service (:mod:`fedlora.simulations.vectorized_service`, one Ray actor per
core) holds the base once and runs the batches the service's queue
(:mod:`fedlora.simulations.vectorized_queue`) hands it: :class:`ServiceCore` computes each
phone's loss on its evaluation rows before training, trains the batch in one
:class:`~fedlora.simulations.vectorized.VectorizedLoraTrainer` pass, and the loss after —
the same numbers a phone's attach → evaluate → train → evaluate → extract gives on PEFT (to
float tolerance). :func:`portable_facts` is what the phones are told about the base.

The phone side — the jobs and :class:`~fedlora.simulations.vectorized_jobs.VectorizedLocalTrainer`
— is :mod:`fedlora.simulations.vectorized_jobs`, which does not import torch.
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import torch

from fedlora.adapter import BaseModelSpec
from fedlora.client.base_facts import BaseFacts
from fedlora.client.model_loading import LoadedBase
from fedlora.client.tokens import PortableTokenizer
from fedlora.simulations.vectorized import PhoneJob, VectorizedLoraTrainer
from fedlora.simulations.vectorized_jobs import VectorizedJob, VectorizedOutcome


def portable_facts(base: LoadedBase) -> BaseFacts | None:
    """The base as phones need to know it, in a form they can use without torch: its facts
    with the tokenizer as a :class:`~fedlora.client.tokens.PortableTokenizer` (None for a
    slow tokenizer: phones then load the base themselves)."""
    tokenizer = PortableTokenizer.of(base.tokenizer)
    return None if tokenizer is None else replace(base.facts, tokenizer=tokenizer)


class ServiceCore:
    """One frozen base + a :class:`VectorizedLoraTrainer`; :meth:`run_batch` is a batch.

    ``threads``: torch intra-op threads for the batch, set by :meth:`run_batch` on the thread
    that calls it (a worker actor's, or an in-process runner's; default: every core).
    """

    def __init__(
        self,
        base_model: torch.nn.Module,
        spec: BaseModelSpec,
        *,
        chunk_size: int = 32,
        tokens_per_pass: int = 1024,
        lora_dropout: float = 0.0,
        threads: int | None = None,
    ) -> None:
        self.trainer = VectorizedLoraTrainer(
            base_model,
            chunk_size=chunk_size,
            tokens_per_pass=tokens_per_pass,
            spec=spec,
            lora_dropout=lora_dropout,
        )
        self.threads = threads or os.cpu_count() or 1

    def run_batch(self, jobs: list[VectorizedJob]) -> list[VectorizedOutcome]:
        torch.set_num_threads(self.threads)
        t0 = time.perf_counter()
        starts = [j.adapter for j in jobs]
        evals = [j.eval for j in jobs]
        before = self.trainer.evaluate(starts, evals)
        results = self.trainer.train(
            [PhoneJob(j.adapter, j.train, j.config, freeze_a=j.freeze_a) for j in jobs]
        )
        after = self.trainer.evaluate([r.adapter for r in results], evals)
        seconds = time.perf_counter() - t0
        return [
            VectorizedOutcome(
                adapter=r.adapter,
                steps=r.steps,
                examples_seen=r.examples_seen,
                first_loss=r.first_loss,
                last_loss=r.last_loss,
                loss_before=b,
                loss_after=a,
                batch_phones=len(jobs),
                batch_seconds=seconds,
            )
            for r, b, a in zip(results, before, after, strict=True)
        ]
