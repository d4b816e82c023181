"""The phone's round API: what the ClientApp calls once per round.

:class:`PhoneSession` keeps the frozen base model loaded for the life of the process (one
load per ``(model source, quantization, device, double_quant)``, shared by every
:class:`PhoneSession` — simulations run many phones per worker) and runs a round:

1. **device policy** — ask the :class:`~fedlora.client.policy.DeviceProbe`; if the phone may
   not train, answer ``not_allowed`` with the reason (no model is even loaded);
2. **data hygiene** — drop automated messages, duplicates, too-short texts; optionally mix
   in generic rehearsal text; ``no_data`` if nothing is left;
3. **memory plan** — with a RAM budget (``client.memory_budget_mb`` or a device profile),
   choose micro-batch, checkpointing, rank or MeZO and verify by measurement;
4. **attach** the community view (validated against the base fingerprint first) at the
   planned rank, apply the aggregation rule's phone-side needs — ``ffa``: A frozen;
   ``fedsa``: the phone's own B from its state directory, B kept local afterwards;
5. **train** (resumable, deadline, cooling) and measure loss before/after and peak memory —
   on PEFT, or through an injected :class:`LocalTrainer` (``PhoneOptions.trainer``: the
   simulation's vectorized service) where it supports the round; ``metrics["trainer"]``
   says which ran;
6. **delta** = trained − received, factor-wise, in the *instructed* rank's layout (a lower
   planned rank is zero-padded back), and a :class:`~fedlora.protocol.PhoneReport` of numbers
   and short status strings only.

The base is shared, so rounds on one base are serialised by a per-base lock and the LoRA
layers are removed again at the end of every round (PEFT ``unload``) — the next round, or
the next simulated phone, starts from the clean base.

This module does not import torch: steps 1–3 and 6 are plain Python and numpy, the PEFT
work is in :mod:`fedlora.client.peft_round`, imported when a round first touches the local
base. A :class:`LocalTrainer` that holds the base elsewhere can describe it
(:meth:`LocalTrainer.base_facts`: tokenizer and identity), and then the phone's process
loads neither the base nor torch unless a round needs them (a memory budget to verify, or
a round the trainer cannot run) — a simulated phone whose training the vectorized service
does starts in ≈ 2 s of CPU instead of ≈ 10 s.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from fedlora.adapter import LoraAdapter, LoraPair
from fedlora.adapter_io import content_hash
from fedlora.client.base_facts import BaseFacts
from fedlora.client.hygiene import (
    HygieneConfig,
    HygieneResult,
    default_rehearsal_corpus,
    filter_texts,
    mix_rehearsal,
)
from fedlora.client.local_state import PhoneLocalState
from fedlora.client.memory_meter import pin_mmap_threshold
from fedlora.client.memory_plan import (
    DeviceProfile,
    FitResult,
    MemoryBudgetError,
    TrainPlan,
    fit_plan,
)
from fedlora.client.policy import DevicePolicy, DeviceProbe, evaluate
from fedlora.client.tokens import TokenizedTexts, tokenize_texts
from fedlora.client.train_config import TrainConfig, TrainResult
from fedlora.config import FedloraSettings, ModelSettings
from fedlora.errors import AdapterValidationError
from fedlora.layout import FlatLayout
from fedlora.protocol import PhoneReport, PhoneStatus, RoundInstructions
from fedlora.ranks import pad_to_rank, truncate_to_rank

if TYPE_CHECKING:  # torch, transformers and peft load only when a round uses the local base
    from fedlora.client.model_loading import LoadedBase

log = logging.getLogger(__name__)

Metric = int | float | str
BaseKey = tuple[str, str, str, bool]


@dataclass(frozen=True)
class LocalTrainingJob:
    """What one phone's local training needs, once policy, hygiene, FedSA and the memory plan
    are settled: the start adapter (at the planned rank), tokenized training and evaluation
    rows, the train config (plan included) and whether A is frozen (FFA)."""

    facts: BaseFacts
    start: LoraAdapter
    train: TokenizedTexts
    eval: TokenizedTexts
    config: TrainConfig
    freeze_a: bool
    lora_dropout: float


@dataclass(frozen=True)
class LocalTrainingResult:
    """A local trainer's answer: the trained adapter at ``start``'s ranks (float32, start's
    metadata), the training result, the evaluation loss before/after, the peak memory (None:
    not measured per phone) and where the time went."""

    adapter: LoraAdapter
    result: TrainResult
    loss_before: float
    loss_after: float
    peak_memory_mb: float | None = None
    metrics: Mapping[str, Metric] = field(default_factory=dict)


class LocalTrainer(Protocol):
    """Replaces attach → evaluate → train → evaluate → extract for a phone's round.

    ``name`` goes into the round's ``metrics["trainer"]``; :meth:`unsupported` says why this
    trainer cannot run ``job`` (the session then uses plain PEFT and records the reason);
    :meth:`run` does the work. The deployment client has none (plain PEFT); simulations pass
    a vectorized one (:mod:`fedlora.simulations.vectorized_service`).
    """

    name: str

    def base_facts(self, model: ModelSettings, device: str) -> BaseFacts | None:
        """The base this trainer trains on, as a round needs to know it (tokenizer,
        identity), when the phone need not load the base itself; None: load it."""
        ...

    def unsupported(self, job: LocalTrainingJob) -> str | None: ...

    def run(self, job: LocalTrainingJob) -> LocalTrainingResult: ...


@dataclass(frozen=True)
class PhoneOptions:
    """Phone-side choices that are not (yet) run settings.

    ``memory_budget_mb`` falls back to ``profile.budget_mb`` when the settings give none;
    ``force_plan`` skips planning (simulated phone classes, tests); MeZO's learning rate
    defaults to ``mezo_lr_scale`` × the instructed rate (SPSA steps need a smaller rate);
    ``trainer`` replaces plain PEFT training where it can (:class:`LocalTrainer`; None: PEFT).
    """

    policy: DevicePolicy = field(default_factory=DevicePolicy)
    hygiene: HygieneConfig = field(default_factory=HygieneConfig)
    rehearsal_fraction: float = 0.0
    rehearsal_texts: Sequence[str] | None = None
    profile: DeviceProfile | None = None
    allow_mezo: bool = True
    mezo_lr_scale: float = 0.1
    mezo_eps: float = 1e-3
    force_plan: TrainPlan | None = None
    max_probes: int = 4
    eval_max_examples: int = 64
    trainer: LocalTrainer | None = None


@dataclass(frozen=True)
class RoundOutcome:
    """A phone's answer to a round: the delta (None unless it trained), the report (sent to
    the server) and extra metrics (numbers and short strings, for a MetricRecord)."""

    delta: LoraAdapter | None
    report: PhoneReport
    metrics: Mapping[str, Metric] = field(default_factory=dict)


def _delta_at_rank(
    after: LoraAdapter, start: LoraAdapter, community: LoraAdapter, rule: str
) -> tuple[LoraAdapter, LoraAdapter]:
    """(delta in the community's layout, the trained adapter padded to the community rank).

    ``start`` is the view training began from (possibly truncated to a lower planned rank);
    the difference is taken at that rank and zero-padded, so ΔW of the delta is exact and
    the layout (modules, shapes, alphas) is exactly the community view's.
    """
    pairs: dict[str, LoraPair] = {}
    trained: dict[str, LoraPair] = {}
    for name, ref in community:
        a, s = after.pairs[name], start.pairs[name]
        r = a.rank
        dA = np.zeros_like(ref.A, dtype=np.float32)
        dB = np.zeros_like(ref.B, dtype=np.float32)
        dA[:r] = a.A.astype(np.float32) - s.A.astype(np.float32)
        dB[:, :r] = a.B.astype(np.float32) - s.B.astype(np.float32)
        if rule == "ffa":
            dA[:] = 0.0
        full_A = ref.A.astype(np.float32).copy()
        full_B = np.zeros_like(ref.B, dtype=np.float32)
        full_A[:r] = a.A
        full_B[:, :r] = a.B
        pairs[name] = LoraPair(dA, dB)
        trained[name] = LoraPair(full_A, full_B)
    meta = community.meta.model_copy(update={"dtype": "float32"})
    delta = LoraAdapter(meta=meta.model_copy(update={"kind": "delta"}), pairs=pairs)
    delta.check_consistent()
    return delta, LoraAdapter(meta=meta, pairs=trained)


def _round_key(instructions: RoundInstructions, community: LoraAdapter, tok: TokenizedTexts) -> str:
    """Digest of what a round's training depends on (instructions, received view, data)."""
    h = hashlib.sha256()
    h.update(repr(sorted(vars(instructions).items())).encode())
    h.update(content_hash(community).encode())
    h.update(repr(tok.ids).encode())
    return h.hexdigest()[:32]


class PhoneSession:
    """Runs rounds for phones of this process; holds the frozen bases across rounds."""

    _bases: ClassVar[dict[BaseKey, LoadedBase]] = {}
    _locks: ClassVar[dict[BaseKey, threading.Lock]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, options: PhoneOptions | None = None) -> None:
        self.options = options or PhoneOptions()
        pin_mmap_threshold()  # resident set == live tensors, so budgets hold (memory_meter)

    # ------------------------------------------------------------------ bases
    @classmethod
    def base_key(cls, model: ModelSettings, device: str) -> BaseKey:
        from fedlora.client.backends import resolve_backend

        backend = resolve_backend(device)
        dev = str(backend.device)
        return (model.base, model.quantization, dev, model.double_quant)

    @classmethod
    def base_for(cls, model: ModelSettings, device: str = "auto") -> LoadedBase:
        """The loaded, frozen base for these settings (loaded on first use, then shared)."""
        from fedlora.client.model_loading import load_base

        key = cls.base_key(model, device)
        with cls._registry_lock:
            lock = cls._locks.setdefault(key, threading.Lock())
        with lock:
            base = cls._bases.get(key)
            if base is None:
                base = load_base(
                    model.base, model.quantization, device=device, double_quant=model.double_quant
                )
                cls._bases[key] = base
        return base

    @classmethod
    def clear_cache(cls) -> None:
        """Forget every loaded base (frees their memory once nothing else holds them)."""
        with cls._registry_lock:
            cls._bases.clear()
            cls._locks.clear()

    @contextmanager
    def _using(self, key: BaseKey) -> Iterator[None]:
        with self._registry_lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield

    @contextmanager
    def _released(self, key: BaseKey) -> Iterator[None]:
        """Let other rounds use the base while this one waits on a trainer that never
        touches it (a vectorized service batches phones of concurrent rounds)."""
        with self._registry_lock:
            lock = self._locks[key]
        lock.release()
        try:
            yield
        finally:
            lock.acquire()

    @contextmanager
    def _local_base(
        self, settings: FedloraSettings, held: LoadedBase | None
    ) -> Iterator[LoadedBase]:
        """The phone's own base for work on it: ``held`` when the round already holds it
        (and its lock), else loaded on first use and locked for the block (a round whose
        trainer holds the base only needs it to probe memory or to fall back to PEFT)."""
        if held is not None:
            yield held
            return
        model, device = settings.model, settings.client.device
        base = self.base_for(model, device)
        with self._using(self.base_key(model, device)):
            yield base

    @staticmethod
    def _trainer_facts(settings: FedloraSettings, opts: PhoneOptions) -> BaseFacts | None:
        """The injected trainer's view of the base, when it can spare the phone loading it."""
        if opts.trainer is None:
            return None
        try:
            return opts.trainer.base_facts(settings.model, settings.client.device)
        except Exception as exc:  # the round still happens, on the local base
            log.warning("%s trainer cannot describe its base: %s", opts.trainer.name, exc)
            return None

    # ------------------------------------------------------------------ round
    def run_round(
        self,
        instructions: RoundInstructions,
        community: LoraAdapter,
        private_texts: Sequence[str],
        settings: FedloraSettings,
        probe: DeviceProbe | None = None,
        state_dir: Path | str | None = None,
        *,
        heldout_texts: Sequence[str] | None = None,
        options: PhoneOptions | None = None,
    ) -> RoundOutcome:
        """One round on this phone. See the module docstring for the steps.

        ``probe`` None means "no policy check" (a development machine); ``state_dir`` is
        the phone's private directory for resumable state and FedSA's personal B (None: no
        resuming; FedSA then starts from the community's B every round).
        """
        started = time.perf_counter()
        opts = options or self.options
        metrics: dict[str, Metric] = {"rank_instructed": instructions.rank}

        def finish(status: PhoneStatus, reason: str, **fields: Any) -> RoundOutcome:
            fields.setdefault("rank", 0)
            report = PhoneReport(
                status=status,
                reason=reason,
                seconds=time.perf_counter() - started,
                **fields,
            )
            return RoundOutcome(delta=None, report=report, metrics=metrics)

        if probe is not None:
            decision = evaluate(opts.policy, probe.read())
            if not decision.allowed:
                return finish("not_allowed", decision.reason)
        hygiene = filter_texts(private_texts, opts.hygiene)
        for reason, n in hygiene.dropped.items():
            metrics[f"dropped_{reason}"] = n
        metrics["examples_raw"] = len(private_texts)
        if not hygiene.kept:
            return finish("no_data", "no usable private examples after filtering")
        if community.max_rank != instructions.rank or len(set(community.meta.ranks.values())) != 1:
            raise AdapterValidationError(
                "<all>",
                f"community view has ranks {sorted(set(community.meta.ranks.values()))}, "
                f"instructions say rank {instructions.rank}",
            )
        args = (instructions, community, hygiene, settings, opts, state_dir, heldout_texts)
        facts = self._trainer_facts(settings, opts)
        try:
            if facts is not None:  # the trainer holds the base; the phone loads none
                return self._train_round(facts, None, *args, metrics, started)
            base = self.base_for(settings.model, settings.client.device)
            facts = base.facts
            with self._using(self.base_key(settings.model, settings.client.device)):
                return self._train_round(facts, base, *args, metrics, started)
        except MemoryBudgetError as exc:
            assert facts is not None
            return finish("failed", f"memory: {exc}"[:200], **facts.report_fields())

    def _train_round(
        self,
        facts: BaseFacts,
        held: LoadedBase | None,
        instr: RoundInstructions,
        community: LoraAdapter,
        hygiene: HygieneResult,
        settings: FedloraSettings,
        opts: PhoneOptions,
        state_dir: Path | str | None,
        heldout_texts: Sequence[str] | None,
        metrics: dict[str, Metric],
        started: float,
    ) -> RoundOutcome:
        """The round once the phone may train and has data. ``held``: the local base when
        the round holds it (and its lock) already; None when the trainer holds the base."""
        client = settings.client
        max_len = settings.model.max_seq_len
        private = hygiene.kept
        texts, n_rehearsal = private, 0
        if opts.rehearsal_fraction > 0:
            generic = opts.rehearsal_texts or default_rehearsal_corpus(seed=instr.seed % 1000)
            frac = opts.rehearsal_fraction
            texts, n_rehearsal = mix_rehearsal(private, generic, frac, instr.seed)
        metrics["rehearsal_examples"] = n_rehearsal
        tok = tokenize_texts(facts.tokenizer, texts, max_len)
        eval_texts = list(heldout_texts or private)[: opts.eval_max_examples]
        eval_tok = tokenize_texts(facts.tokenizer, eval_texts, max_len)
        metrics["loss_on"] = "heldout" if heldout_texts else "train"

        local = PhoneLocalState(state_dir) if state_dir is not None else None
        view = community
        if instr.rule == "fedsa":
            from fedlora.aggregation.fedsa import personalize

            own = local.load_personal(community) if local is not None else None
            metrics["fedsa_b"] = "local" if own is not None else "community"
            if own is not None:
                view = personalize(community, own)

        round_key = _round_key(instr, view, tok)
        saved_plan = local.load_plan(round_key) if local is not None else None
        if saved_plan is not None:  # a restarted round: same plan as the saved state
            fit = FitResult(plan=saved_plan)
        else:
            fit = self._plan(held, instr, view, tok, settings, opts, client.memory_budget_mb)
            if local is not None and client.checkpoint_every > 0:
                local.save_plan(round_key, fit.plan)
        plan = fit.plan
        metrics["plan"] = plan.describe()
        metrics["rank_trained"] = plan.rank
        metrics["backoffs"] = len(fit.backoffs)
        if fit.backoffs:
            metrics["backoff_path"] = " > ".join(fit.backoffs)[:200]
        start = view if plan.rank == instr.rank else truncate_to_rank(view, plan.rank)
        deadline = instr.deadline_s if instr.deadline_s is not None else client.round_deadline_s
        mezo = plan.method == "mezo"
        cfg = TrainConfig(
            steps=instr.local_steps,
            batch_size=instr.batch_size,
            micro_batch_size=plan.micro_batch,
            learning_rate=instr.learning_rate * (opts.mezo_lr_scale if mezo else 1.0),
            weight_decay=client.weight_decay,
            seed=instr.seed,
            gradient_checkpointing=plan.checkpointing,
            cooling_every=client.cooling_every,
            cooling_seconds=client.cooling_seconds,
            deadline_s=deadline,  # the time left is set after the first evaluation
            checkpoint_every=client.checkpoint_every if local is not None else 0,
            checkpoint_path=local.train_state_path if local is not None else None,
            run_key=f"{round_key}:{plan.describe()}",
            method=plan.method,
            mezo_eps=opts.mezo_eps,
        )
        done: LocalTrainingResult | None = None
        if opts.trainer is not None:
            job = LocalTrainingJob(
                facts, start, tok, eval_tok, cfg, instr.rule == "ffa", settings.lora.dropout
            )
            why_not = opts.trainer.unsupported(job)
            if why_not is None:
                try:
                    if held is None:
                        done = opts.trainer.run(job)
                    else:
                        with self._released(self.base_key(settings.model, client.device)):
                            done = opts.trainer.run(job)
                except Exception as exc:  # the round still happens, on plain PEFT
                    log.warning("%s trainer failed, using PEFT: %s", opts.trainer.name, exc)
                    why_not = f"error: {type(exc).__name__}: {exc}"
            if done is not None:
                metrics["trainer"] = opts.trainer.name
                metrics.update(done.metrics)
            else:
                metrics["trainer"] = "peft"
                metrics["trainer_fallback"] = (why_not or "")[:200]
        else:
            metrics["trainer"] = "peft"
        if done is not None:
            result, loss_before, loss_after = done.result, done.loss_before, done.loss_after
            after, peak = done.adapter, done.peak_memory_mb
        else:
            from fedlora.client.peft_round import train_on_peft

            with self._local_base(settings, held) as base:
                facts = base.facts  # the report describes the base it trained on
                peft = train_on_peft(
                    base, start, tok, eval_tok, cfg,
                    rule=instr.rule, dropout=settings.lora.dropout, started=started,
                )  # fmt: skip
            result, loss_before, loss_after = peft.result, peft.loss_before, peft.loss_after
            after, peak = peft.adapter, peft.peak_memory_mb
        return self._finish_round(
            facts, instr, community, view, start, after, result, loss_before, loss_after, peak,
            hygiene, settings, opts, local, plan, metrics, started,
        )  # fmt: skip

    def _finish_round(
        self,
        facts: BaseFacts,
        instr: RoundInstructions,
        community: LoraAdapter,
        view: LoraAdapter,
        start: LoraAdapter,
        after: LoraAdapter,
        result: TrainResult,
        loss_before: float,
        loss_after: float,
        peak: float | None,
        hygiene: HygieneResult,
        settings: FedloraSettings,
        opts: PhoneOptions,
        local: PhoneLocalState | None,
        plan: TrainPlan,
        metrics: dict[str, Metric],
        started: float,
    ) -> RoundOutcome:
        """The delta in the community's layout, FedSA's local B, metrics and the report."""
        client = settings.client
        delta, trained = _delta_at_rank(after, start, view, instr.rule)
        delta = delta.with_meta(round=instr.round, producer="fedlora-phone")
        if instr.rule == "fedsa":
            if local is not None:
                local.save_personal(trained)
            delta = LoraAdapter(
                meta=delta.meta,
                pairs={n: LoraPair(p.A, np.zeros_like(p.B)) for n, p in delta},
            )
        if local is not None:
            local.clear_round()
        metrics.update(_train_metrics(result, delta, instr))
        budget = client.memory_budget_mb or (opts.profile.budget_mb if opts.profile else None)
        if budget is not None:
            metrics["memory_budget_mb"] = float(budget)
        status: PhoneStatus = "deadline" if result.status == "deadline" else "trained"
        reason = ""
        if plan.rank != instr.rank:
            reason = f"rank {instr.rank}->{plan.rank} to fit memory; delta zero-padded"
        elif plan.method == "mezo":
            reason = "mezo: forward-only training to fit memory"
        if status == "deadline":
            reason = f"deadline after {result.steps}/{instr.local_steps} steps"
        report = PhoneReport(
            status=status,
            reason=reason,
            num_examples=len(hygiene.kept),
            steps=result.steps,
            loss_before=loss_before,
            loss_after=loss_after,
            seconds=time.perf_counter() - started,
            peak_memory_mb=peak,
            rank=plan.rank,
            bytes_down=community.num_parameters * 4,
            **facts.report_fields(),
        )
        return RoundOutcome(delta=delta, report=report, metrics=metrics)

    # ------------------------------------------------------------------ planning
    def _plan(
        self,
        held: LoadedBase | None,
        instr: RoundInstructions,
        view: LoraAdapter,
        tok: TokenizedTexts,
        settings: FedloraSettings,
        opts: PhoneOptions,
        budget_mb: int | None,
    ) -> FitResult:
        client = settings.client
        micro = instr.micro_batch_size or client.micro_batch_size
        if micro is not None and instr.batch_size % micro:
            micro = None
        if opts.force_plan is not None:
            return FitResult(plan=opts.force_plan)
        budget = budget_mb or (opts.profile.budget_mb if opts.profile else None)
        if budget is None:
            mb = micro or instr.batch_size
            plan = TrainPlan(
                "backprop", instr.rank, mb, instr.batch_size // mb, client.gradient_checkpointing
            )
            return FitResult(plan=plan)
        from fedlora.client.peft_round import footprint, probe_peak_mb

        seq = max(len(r) for r in tok.ids)
        with self._local_base(settings, held) as base:  # a budget is checked on the real base
            fp = footprint(base, view.modules)

            def probe(plan: TrainPlan) -> float:
                return probe_peak_mb(
                    base, view, tok, plan, fp, rule=instr.rule, dropout=settings.lora.dropout
                )

            return fit_plan(
                fp,
                float(budget),
                probe,
                rank=instr.rank,
                batch_size=instr.batch_size,
                seq_len=seq,
                micro_batch=micro,
                checkpointing=client.gradient_checkpointing,
                max_probes=opts.max_probes,
                allow_mezo=opts.allow_mezo,
            )

    @staticmethod
    def merge_community(base_source: str, community: LoraAdapter, out_dir: Path) -> str:
        """Merge the community adapter into a float base for inference (see merge.py)."""
        from fedlora.client.merge import merge_for_inference

        return merge_for_inference(base_source, community, out_dir).directory


def _train_metrics(
    result: TrainResult, delta: LoraAdapter, instr: RoundInstructions
) -> dict[str, Metric]:
    out: dict[str, Metric] = {
        "steps_done": result.steps,
        "steps_planned": instr.local_steps,
        "resumed_from_step": result.resumed_from,
        "train_loss_first": result.first_loss,
        "train_loss_last": result.last_loss,
        "train_seconds": result.seconds,
        "delta_norm": float(np.sqrt(sum(float(np.sum(p.A**2) + np.sum(p.B**2)) for _, p in delta))),
    }
    padded = pad_to_rank(delta, instr.r_max) if instr.r_max >= delta.max_rank else delta
    out["layout_digest"] = FlatLayout.of(padded).digest()
    return out
