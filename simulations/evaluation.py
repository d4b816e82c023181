"""End-of-run evaluation: is the community adapter worth having?

On a fixed sample of phones (deterministic from the data seed), each phone's *held-out* texts
— never trained on by anyone — are scored (token-weighted mean next-token loss, averaged
over phones with equal weight, like the round loop's ``community_loss``) under four models:

* **base** — the frozen base alone;
* **community** — base + the final community adapter (at the top rank, as published);
* **local-only** — each sampled phone fine-tunes on its own (hygiene-filtered) training
  texts, starting from the same round-0 adapter the federation started from, at its own
  rank, for as many local steps as it actually trained in the simulation
  (``participation × client.local_steps``; a phone that never trained stays at the base) —
  what the phone would have got from the same compute without federating;
* **centralized** — one adapter at the top rank trained on the union of all phones' training
  texts for the same number of example-steps the community's contributions represent
  (``Σ contributors × local_steps × batch_size``), in batches of ``central_batch_size`` —
  the non-private upper bound.

Per round (``eval_per_round``) every committed community adapter from the registry is scored
on the same sample, so the loss curve is not blurred by which phones happened to be sampled.

The base model is loaded once here, in the driver, after the simulation's workers are gone;
training and evaluation reuse the phone code (:mod:`fedlora.client.trainer`,
:mod:`fedlora.client.peft_bridge`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fedlora.adapter import LoraAdapter
from fedlora.aggregation import AggregationSpec
from fedlora.aggregation.ffa import initial_adapter
from fedlora.config import FedloraSettings
from fedlora.data.seeding import stable_seed
from fedlora.model_files import linear_shapes_from_dir
from fedlora.ranks import truncate_to_rank

Say = Callable[[str], None]


def eval_sample(num_phones: int, k: int, seed: int) -> list[int]:
    """``k`` partition ids drawn without replacement, fixed by the data seed."""
    rng = np.random.default_rng(stable_seed("fedlora-eval-sample", seed))
    k = min(k, num_phones)
    return sorted(int(i) for i in rng.choice(num_phones, size=k, replace=False))


@dataclass(frozen=True)
class Triad:
    """The end-of-run comparison (losses; lower is better) and how it was obtained."""

    phones: int
    base: float
    community: float
    local_only: float
    centralized: float | None
    local_only_steps_mean: float
    local_only_trained_phones: int
    centralized_steps: int
    centralized_batch_size: int
    per_round: dict[int, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["per_round"] = {str(k): v for k, v in sorted(self.per_round.items())}
        out["perplexity"] = {
            name: math.exp(v)
            for name, v in (
                ("base", self.base),
                ("community", self.community),
                ("local_only", self.local_only),
                ("centralized", self.centralized),
            )
            if v is not None
        }
        return out


class Evaluator:
    """Holds the base, tokenizer and round-0 adapter for one run's settings.

    Torch runs single-threaded here by default, like a simulated phone: with a small model,
    intra-op threads gain little, and on a busy machine spinning OpenMP threads cost many
    times the work (measured: 3.3 s vs 0.5 s per step of the default model under load).
    """

    def __init__(self, settings: FedloraSettings, threads: int = 1) -> None:
        import torch

        logging.getLogger("torch").setLevel(logging.ERROR)  # torch resets it on import
        from fedlora.client.model_loading import load_base

        torch.set_num_threads(threads)
        self.s = settings
        self.base = load_base(
            settings.model.base,
            settings.model.quantization,
            device=settings.client.device,
            double_quant=settings.model.double_quant,
        )
        self.ranks = tuple(sorted(set(settings.simulation.ranks)))
        scaling = settings.lora.alpha / settings.lora.rank
        shapes = linear_shapes_from_dir(self.base.directory, settings.lora.target_modules)
        spec = AggregationSpec(
            base_fingerprint=self.base.fingerprint,
            linear_shapes=shapes,
            scalings=dict.fromkeys(shapes, scaling),
            ranks=self.ranks,
            dtype="float32",
        )
        self.initial = initial_adapter(spec, seed=settings.data.seed)

    def tokenize(self, texts: Sequence[str]) -> Any:
        from fedlora.client.text_batches import tokenize_texts

        return tokenize_texts(self.base.tokenizer, list(texts), self.s.model.max_seq_len)

    def losses(self, adapter: LoraAdapter | None, heldouts: Sequence[Any]) -> list[float]:
        """Held-out loss of base (+ ``adapter``) on each tokenized held-out set."""
        from fedlora.client.peft_bridge import attach_adapter
        from fedlora.client.text_batches import evaluate_loss

        if adapter is None:
            return [evaluate_loss(self.base.model, tok) for tok in heldouts]
        model = attach_adapter(self.base.model, adapter, self.base.spec)
        try:
            return [evaluate_loss(model, tok) for tok in heldouts]
        finally:
            model.unload()

    def train_and_score(
        self,
        start: LoraAdapter,
        train_tok: Any,
        steps: int,
        batch_size: int,
        seed: int,
        heldouts: Sequence[Any],
    ) -> list[float]:
        """Fine-tune from ``start`` for ``steps`` steps, then score on ``heldouts``."""
        from fedlora.client.peft_bridge import attach_adapter
        from fedlora.client.text_batches import evaluate_loss
        from fedlora.client.trainer import TrainConfig, train_lora

        c = self.s.client
        micro = (
            c.micro_batch_size
            if c.micro_batch_size and batch_size % c.micro_batch_size == 0
            else None
        )
        cfg = TrainConfig(
            steps=steps,
            batch_size=batch_size,
            micro_batch_size=micro,
            learning_rate=c.learning_rate,
            weight_decay=c.weight_decay,
            seed=seed,
        )
        model = attach_adapter(self.base.model, start, self.base.spec, dropout=self.s.lora.dropout)
        try:
            train_lora(model, train_tok, cfg)
            return [evaluate_loss(model, tok) for tok in heldouts]
        finally:
            model.unload()


def evaluate_run(
    settings: FedloraSettings,
    *,
    community: LoraAdapter | None,
    round_adapters: Mapping[int, Callable[[], LoraAdapter]],
    participation: Callable[[Sequence[int]], Mapping[int, int]],
    phone_rank: Callable[[int], int],
    contributions: int,
    eval_phones: int,
    central_batch_size: int | None = None,
    centralized: bool = True,
    say: Say | None = None,
) -> Triad:
    """Run the comparison (see the module docstring).

    ``round_adapters`` maps committed round numbers to loaders of their community adapter;
    ``participation(pids)`` gives the rounds each sampled phone trained in;
    ``contributions`` is the total number of phone contributions that reached the sums.
    """
    from fedlora.client.hygiene import filter_texts
    from fedlora.data.from_settings import load_federation

    note = say or (lambda _m: None)
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    ev = Evaluator(settings)
    fed = load_federation(settings.data)
    ids = fed.client_ids
    pids = eval_sample(len(ids), eval_phones, settings.data.seed)
    phones = [fed.clients[ids[p]] for p in pids]
    heldouts = [ev.tokenize(p.heldout) for p in phones]
    seconds["setup"] = time.perf_counter() - t0

    t = time.perf_counter()
    base = float(np.mean(ev.losses(None, heldouts)))
    comm = float(np.mean(ev.losses(community, heldouts))) if community is not None else base
    note(f"base {base:.4f}  community {comm:.4f}")
    seconds["base_community"] = time.perf_counter() - t

    per_round: dict[int, float] = {0: base}
    t = time.perf_counter()
    for rnd, load in sorted(round_adapters.items()):
        per_round[rnd] = float(np.mean(ev.losses(load(), heldouts)))
    seconds["per_round"] = time.perf_counter() - t

    t = time.perf_counter()
    c = settings.client
    counts = participation(pids)
    local: list[float] = []
    steps_used: list[int] = []
    for pid, phone, held in zip(pids, phones, heldouts, strict=True):
        steps = counts.get(pid, 0) * c.local_steps
        steps_used.append(steps)
        kept = filter_texts(phone.train).kept
        if steps == 0 or not kept:
            local.append(float(ev.losses(None, [held])[0]))
            continue
        start = truncate_to_rank(ev.initial, phone_rank(pid))
        seed = stable_seed("fedlora-local-only", settings.data.seed, pid) % 2**31
        local.append(
            ev.train_and_score(start, ev.tokenize(kept), steps, c.batch_size, seed, [held])[0]
        )
    local_mean = float(np.mean(local))
    note(f"local-only {local_mean:.4f} (mean {np.mean(steps_used):.1f} steps)")
    seconds["local_only"] = time.perf_counter() - t

    t = time.perf_counter()
    batch = central_batch_size or 4 * c.batch_size
    example_steps = contributions * c.local_steps * c.batch_size
    central_steps = math.ceil(example_steps / batch) if example_steps else 0
    central: float | None = None
    if centralized and central_steps > 0:
        union = [t for cd in fed.clients.values() for t in filter_texts(cd.train).kept]
        tok = ev.tokenize(union)
        del union
        scores = ev.train_and_score(
            ev.initial, tok, central_steps, batch, settings.data.seed % 2**31, heldouts
        )
        central = float(np.mean(scores))
        note(f"centralized {central:.4f} ({central_steps} steps of {batch})")
    seconds["centralized"] = time.perf_counter() - t
    return Triad(
        phones=len(pids),
        base=base,
        community=comm,
        local_only=local_mean,
        centralized=central,
        local_only_steps_mean=float(np.mean(steps_used)) if steps_used else 0.0,
        local_only_trained_phones=sum(1 for s in steps_used if s > 0),
        centralized_steps=central_steps,
        centralized_batch_size=batch,
        per_round=per_round,
        seconds=seconds,
    )
