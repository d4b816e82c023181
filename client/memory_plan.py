"""Memory planning: fit a LoRA step into the phone's RAM budget.

A phone with 8 GB of RAM may give a background training job a fraction of it. What a LoRA
step needs is (1) the frozen base's weights, (2) the LoRA state — parameters, gradients and
AdamW's two moments, 16 bytes per LoRA parameter — and (3) activations kept for the backward
pass, which grow with micro-batch × sequence length and dominate for all but the smallest
models. The levers, cheapest first (measured on the default model):

1. **smaller micro-batch** with gradient accumulation — ×4 accumulation cuts live
   activations ~4× for ~10% more time;
2. **gradient checkpointing** — keeps only each layer's input and recomputes the rest in the
   backward pass: ~3.5× fewer activations for ~45% more time;
3. **lower rank** ("dynamic rank scaling") — fewer LoRA parameters and optimizer state; the
   phone still returns a delta in its instructed rank's layout (zero-padded);
4. **MeZO** (:mod:`fedlora.client.mezo`) — forward passes only: no activations kept, no
   gradients, no optimizer state, so the smallest phones still contribute.

:func:`plan_training` walks that ladder in order on an analytic estimate (:func:`estimate_bytes`)
and returns the first plan that fits; :func:`fit_plan` then checks plans against *measured*
peaks (a probe step under :class:`fedlora.client.memory_meter.PeakMemoryMeter`), rescales
the estimate by what it saw and backs off further when a measurement exceeds the budget.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from fedlora.errors import FedloraError

MB = 1024 * 1024
RUNTIME_SLACK_BYTES = 8 * MB
"""Allocator fragmentation and small temporaries not worth modelling one by one."""

Method = Literal["backprop", "mezo"]


class MemoryBudgetError(FedloraError, RuntimeError):
    """Even the lowest-memory plan (MeZO, micro-batch 1) does not fit the budget."""


@dataclass(frozen=True)
class DeviceProfile:
    """A class of handset: its RAM and the share of it a background training job may use.

    Android kills background apps well before RAM is full and the user's foreground apps
    come first, so the default share is about a third; what is left for training is the
    share minus the runtime's own fixed cost (interpreter, libraries), which is the same
    for every plan and so not part of the budget the planner fits.
    """

    name: str
    ram_mb: int
    training_share: float = 0.35
    runtime_mb: int = 400

    @property
    def budget_mb(self) -> int:
        return max(16, int(self.ram_mb * self.training_share) - self.runtime_mb)


PROFILES: dict[str, DeviceProfile] = {
    p.name: p
    for p in (
        DeviceProfile("phone-3gb", 3 * 1024),
        DeviceProfile("phone-4gb", 4 * 1024),
        DeviceProfile("phone-6gb", 6 * 1024),
        DeviceProfile("phone-8gb", 8 * 1024),
        DeviceProfile("phone-12gb", 12 * 1024),
        DeviceProfile("phone-16gb", 16 * 1024),
    )
}


def detect_profile(training_share: float = 0.35) -> DeviceProfile:
    """The profile of this machine from its total RAM (psutil)."""
    import psutil

    ram = int(psutil.virtual_memory().total // MB)
    return DeviceProfile("this-device", ram, training_share)


@dataclass(frozen=True)
class ModelFootprint:
    """What the memory of a LoRA step depends on, read once from the loaded base."""

    weight_bytes: int
    num_layers: int
    hidden: int
    intermediate: int
    heads: int
    vocab: int
    act_bytes: int
    lora_dims: tuple[tuple[int, int], ...]
    """``(d_in, d_out)`` of every module that carries LoRA."""

    @classmethod
    def from_model(
        cls,
        model: Any,
        lora_dims: Iterable[tuple[int, int]],
        weight_bytes: int,
        act_bytes: int,
    ) -> ModelFootprint:
        cfg = model.config
        return cls(
            weight_bytes=int(weight_bytes),
            num_layers=int(cfg.num_hidden_layers),
            hidden=int(cfg.hidden_size),
            intermediate=int(getattr(cfg, "intermediate_size", 4 * cfg.hidden_size)),
            heads=int(cfg.num_attention_heads),
            vocab=int(cfg.vocab_size),
            act_bytes=int(act_bytes),
            lora_dims=tuple((int(a), int(b)) for a, b in lora_dims),
        )

    def lora_parameters(self, rank: int) -> int:
        return rank * sum(d_in + d_out for d_in, d_out in self.lora_dims)


@dataclass(frozen=True)
class TrainPlan:
    """How the phone trains this round so that it fits its memory."""

    method: Method
    rank: int
    micro_batch: int
    accumulation: int
    checkpointing: bool
    estimate_mb: float = 0.0
    measured_mb: float | None = None

    @property
    def key(self) -> tuple[str, int, int, bool]:
        return (self.method, self.rank, self.micro_batch, self.checkpointing)

    def describe(self) -> str:
        ckpt = "+ckpt" if self.checkpointing else ""
        return f"{self.method} r={self.rank} mb={self.micro_batch}x{self.accumulation}{ckpt}"


def _per_layer_token_bytes(fp: ModelFootprint, seq_len: int, rank: int) -> float:
    """Activation bytes one decoder layer keeps for backward, per token."""
    e = fp.act_bytes
    h, i = fp.hidden, fp.intermediate
    per_layer_lora = [d for d in fp.lora_dims][: max(1, len(fp.lora_dims) // max(fp.num_layers, 1))]
    # norms keep an fp32 copy; attention keeps q/k/v/rope temporaries and probabilities;
    # the SwiGLU MLP keeps gate, up, silu(gate) and their product.
    dense = e * (10 * h + 4 * i + 2 * fp.heads * seq_len) + 8 * h
    # PEFT casts each LoRA input to fp32 and keeps x @ A for the B gradient
    lora = sum(4 * (d_in + rank) for d_in, _ in per_layer_lora)
    return float(dense + lora)


def activation_bytes_per_example(
    fp: ModelFootprint, seq_len: int, rank: int, checkpointing: bool, method: Method = "backprop"
) -> float:
    """Peak activation bytes one example adds, for a step of the given kind."""
    layer = seq_len * _per_layer_token_bytes(fp, seq_len, rank)
    if method == "mezo":
        # forward only: logits, their fp32 log-softmax and the loss temporaries; a layer's
        # temporaries are freed before the next layer runs
        return float(seq_len * fp.vocab * (fp.act_bytes + 8) + layer)
    # logits, fp32 copy, saved log-softmax and the logits' gradient
    logits = seq_len * fp.vocab * (fp.act_bytes + 12)
    if checkpointing:
        kept = fp.num_layers * seq_len * fp.hidden * fp.act_bytes
        return float(logits + kept + 2 * layer)
    return float(logits + fp.num_layers * layer * 1.3)


def lora_state_bytes(fp: ModelFootprint, rank: int, method: Method) -> float:
    """Parameters + gradients + AdamW moments (backprop) or parameters + one z (MeZO)."""
    n = fp.lora_parameters(rank)
    return float(16 * n if method == "backprop" else 8 * n)


def estimate_bytes(
    fp: ModelFootprint,
    plan: TrainPlan,
    seq_len: int,
    activation_scale: float = 1.0,
) -> float:
    """Estimated peak bytes of a step under ``plan``: weights + LoRA state + activations."""
    act = activation_bytes_per_example(fp, seq_len, plan.rank, plan.checkpointing, plan.method)
    return (
        fp.weight_bytes
        + lora_state_bytes(fp, plan.rank, plan.method)
        + activation_scale * act * plan.micro_batch
        + RUNTIME_SLACK_BYTES
    )


def _divisors_desc(n: int, start: int) -> list[int]:
    return [d for d in range(min(n, start), 0, -1) if n % d == 0]


def _ranks_desc(rank: int) -> list[int]:
    out = [rank]
    while out[-1] > 1:
        out.append(max(1, out[-1] // 2))
    return out


def candidate_plans(
    rank: int,
    batch_size: int,
    micro_batch: int | None = None,
    checkpointing: bool = False,
) -> list[TrainPlan]:
    """The back-off ladder, best first: micro-batch ↓, then checkpointing, then rank ↓, then
    MeZO (largest micro-batch first). ``checkpointing=True`` starts the ladder with it on."""
    start = micro_batch or batch_size
    plans: list[TrainPlan] = []
    for r in _ranks_desc(rank):
        for ckpt in (True,) if checkpointing else (False, True):
            for mb in _divisors_desc(batch_size, start):
                plans.append(TrainPlan("backprop", r, mb, batch_size // mb, ckpt))
    for mb in _divisors_desc(batch_size, start):
        plans.append(TrainPlan("mezo", rank, mb, batch_size // mb, False))
    return plans


def plan_training(
    fp: ModelFootprint,
    budget_mb: float,
    *,
    rank: int,
    batch_size: int,
    seq_len: int,
    micro_batch: int | None = None,
    checkpointing: bool = False,
    activation_scale: float = 1.0,
    exclude: Sequence[tuple[str, int, int, bool]] = (),
    allow_mezo: bool = True,
) -> TrainPlan:
    """The first plan on the ladder whose estimate fits ``budget_mb``."""
    budget = budget_mb * MB
    smallest: TrainPlan | None = None
    for plan in candidate_plans(rank, batch_size, micro_batch, checkpointing):
        if plan.key in exclude or (plan.method == "mezo" and not allow_mezo):
            continue
        est = estimate_bytes(fp, plan, seq_len, activation_scale)
        plan = replace(plan, estimate_mb=est / MB)
        if smallest is None or plan.estimate_mb < smallest.estimate_mb:
            smallest = plan
        if est <= budget:
            return plan
    need = f"{smallest.estimate_mb:.0f} MB ({smallest.describe()})" if smallest else "unknown"
    raise MemoryBudgetError(
        f"memory budget {budget_mb:.0f} MB is below the smallest plan's estimate {need}"
    )


@dataclass
class FitResult:
    """The plan that fits, and what the planner tried on the way (for the report)."""

    plan: TrainPlan
    tried: list[TrainPlan] = field(default_factory=list)
    activation_scale: float = 1.0

    @property
    def backoffs(self) -> list[str]:
        return [p.describe() for p in self.tried if p is not self.plan]


Probe = Callable[[TrainPlan], float]
"""Runs one worst-case micro-step under ``plan`` and returns its measured peak in MB
(weights + working set)."""


def fit_plan(
    fp: ModelFootprint,
    budget_mb: float,
    probe: Probe,
    *,
    rank: int,
    batch_size: int,
    seq_len: int,
    micro_batch: int | None = None,
    checkpointing: bool = False,
    max_probes: int = 4,
    allow_mezo: bool = True,
) -> FitResult:
    """Choose a plan on estimates, verify it with a measured probe, back off while over budget.

    After each probe the activation part of the estimate is rescaled by measured/estimated,
    so later choices use what this phone actually showed. A measured peak over the budget
    excludes that plan; the last resort's measurement is accepted only if it fits.
    """
    scale = 1.0
    excluded: list[tuple[str, int, int, bool]] = []
    result = FitResult(plan=TrainPlan("backprop", rank, batch_size, 1, checkpointing))
    ladder = candidate_plans(rank, batch_size, micro_batch, checkpointing)
    for _ in range(max_probes):
        try:
            plan = plan_training(
                fp,
                budget_mb,
                rank=rank,
                batch_size=batch_size,
                seq_len=seq_len,
                micro_batch=micro_batch,
                checkpointing=checkpointing,
                activation_scale=scale,
                exclude=excluded,
                allow_mezo=allow_mezo,
            )
        except MemoryBudgetError:
            # estimates are conservative: measure the cheapest plan left before giving up
            left = [
                replace(p, estimate_mb=estimate_bytes(fp, p, seq_len, scale) / MB)
                for p in ladder
                if p.key not in excluded and (allow_mezo or p.method != "mezo")
            ]
            if not left:
                raise
            plan = min(left, key=lambda p: p.estimate_mb)
        measured = probe(plan)
        plan = replace(plan, measured_mb=measured)
        result.tried.append(plan)
        if measured <= budget_mb:
            result.plan = plan
            result.activation_scale = scale
            return result
        fixed = (fp.weight_bytes + lora_state_bytes(fp, plan.rank, plan.method)) / MB
        est_act = max(plan.estimate_mb - fixed, 1e-3)
        scale = max(scale * 1.05, scale * (measured - fixed) / est_act)
        excluded.append(plan.key)
    raise MemoryBudgetError(
        f"no plan measured under the memory budget {budget_mb:.0f} MB after {max_probes} "
        f"probes (last: {result.tried[-1].describe()} at {result.tried[-1].measured_mb:.0f} MB)"
    )
