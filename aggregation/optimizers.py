"""Server optimizers: the aggregated delta is a pseudo-gradient (FedOpt).

Reddi et al., "Adaptive Federated Optimization", ICLR 2021 (Algorithm 2). With ``Δₜ`` the
round's aggregated update (the weighted mean of phones' ``after − before``, i.e. minus a
pseudo-gradient):

* FedAvg:  ``x ← x + η Δ``
* FedAvgM: ``m ← μ m + Δ``; ``x ← x + η m``  (Hsu et al., 2019)
* FedAdam: ``m ← β₁ m + (1 − β₁) Δ``; ``v ← β₂ v + (1 − β₂) Δ²``; ``x ← x + η m / (√v + τ)``
* FedYogi: as FedAdam but ``v ← v − (1 − β₂) Δ² sign(v − Δ²)``

Following the paper, ``m`` starts at 0 and ``v`` at ``τ²`` (``v₋₁ ≥ τ²``), with no bias
correction. All operations are elementwise, so they run on one flat vector or per tensor
alike: parameters are a mapping name → array (``{"flat": vec}`` for a flat vector).

An optimizer is a small frozen object (its hyper-parameters); its state is an explicit,
immutable :class:`OptimizerState` passed in and returned, so the server can persist it and a
failed step changes nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .errors import AggregationError

Tensors = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class OptimizerState:
    """Round counter and named slot tensors (e.g. ``{"m": {...}, "v": {...}}``)."""

    step: int = 0
    slots: Mapping[str, Mapping[str, np.ndarray]] = field(default_factory=dict)


def _check(params: Tensors, update: Tensors) -> None:
    if set(params) != set(update):
        odd = sorted(set(params) ^ set(update))
        raise AggregationError(f"update and parameters name different tensors (e.g. {odd[0]!r})")
    for name, p in params.items():
        u = update[name]
        if np.shape(u) != np.shape(p):
            raise AggregationError(
                f"update of tensor {name!r} has shape {np.shape(u)}, parameters {np.shape(p)}"
            )
        if not np.all(np.isfinite(u)):
            raise AggregationError(f"update of tensor {name!r} has non-finite values")


def _check_slots(state: OptimizerState, params: Tensors, names: tuple[str, ...]) -> None:
    for slot in names:
        tensors = state.slots.get(slot)
        if tensors is None or set(tensors) != set(params):
            raise AggregationError(
                f"optimizer state slot {slot!r} does not match the parameters "
                "(did the rule or the adapter layout change? start from a fresh state)"
            )
        for name, p in params.items():
            if np.shape(tensors[name]) != np.shape(p):
                raise AggregationError(
                    f"optimizer state {slot}[{name!r}] has shape {np.shape(tensors[name])}, "
                    f"parameters {np.shape(p)}"
                )


class ServerOptimizer(ABC):
    """Applies a pseudo-gradient to the community's parameters."""

    name: ClassVar[str] = "?"
    slot_names: ClassVar[tuple[str, ...]] = ()

    def init_state(self, params: Tensors) -> OptimizerState:
        """Fresh state for ``params`` (zeros for every slot by default)."""
        return OptimizerState(
            step=0,
            slots={
                s: {n: np.zeros(np.shape(p), dtype=np.float64) for n, p in params.items()}
                for s in self.slot_names
            },
        )

    def step(
        self, params: Tensors, update: Tensors, state: OptimizerState | None = None
    ) -> tuple[dict[str, np.ndarray], OptimizerState]:
        """New parameters and state; inputs are not modified; raises before any change."""
        _check(params, update)
        if state is None:
            state = self.init_state(params)
        _check_slots(state, params, self.slot_names)
        new_params: dict[str, np.ndarray] = {}
        new_slots: dict[str, dict[str, np.ndarray]] = {s: {} for s in self.slot_names}
        for name, p in params.items():
            x = np.asarray(p, dtype=np.float64)
            d = np.asarray(update[name], dtype=np.float64)
            old = {s: np.asarray(state.slots[s][name]) for s in self.slot_names}
            x_new, slots = self._tensor_step(x, d, old)
            if not np.all(np.isfinite(x_new)):
                raise AggregationError(f"{self.name}: step made tensor {name!r} non-finite")
            new_params[name] = x_new
            for s, v in slots.items():
                new_slots[s][name] = v
        return new_params, OptimizerState(step=state.step + 1, slots=new_slots)

    @abstractmethod
    def _tensor_step(
        self, x: np.ndarray, delta: np.ndarray, slots: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One tensor's new value and slot values (pure)."""


@dataclass(frozen=True)
class FedAvg(ServerOptimizer):
    """``x ← x + η Δ`` (McMahan et al., 2017; η = 1 is plain averaging)."""

    lr: float = 1.0
    name: ClassVar[str] = "fedavg"

    def _tensor_step(
        self, x: np.ndarray, delta: np.ndarray, slots: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return x + self.lr * delta, {}


@dataclass(frozen=True)
class FedAvgM(ServerOptimizer):
    """Server momentum: ``m ← μ m + Δ``; ``x ← x + η m`` (Hsu et al., 2019; Reddi et al.)."""

    lr: float = 1.0
    momentum: float = 0.9
    name: ClassVar[str] = "fedavgm"
    slot_names: ClassVar[tuple[str, ...]] = ("m",)

    def _tensor_step(
        self, x: np.ndarray, delta: np.ndarray, slots: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        m = self.momentum * slots["m"] + delta
        return x + self.lr * m, {"m": m}


@dataclass(frozen=True)
class _Adaptive(ServerOptimizer):
    lr: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    slot_names: ClassVar[tuple[str, ...]] = ("m", "v")

    def init_state(self, params: Tensors) -> OptimizerState:
        """``m₋₁ = 0``, ``v₋₁ = τ²`` (Reddi et al., Algorithm 2)."""
        return OptimizerState(
            step=0,
            slots={
                "m": {n: np.zeros(np.shape(p)) for n, p in params.items()},
                "v": {n: np.full(np.shape(p), self.tau**2) for n, p in params.items()},
            },
        )

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _tensor_step(
        self, x: np.ndarray, delta: np.ndarray, slots: Mapping[str, np.ndarray]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        m = self.beta1 * slots["m"] + (1.0 - self.beta1) * delta
        v = self._second_moment(slots["v"], delta * delta)
        return x + self.lr * m / (np.sqrt(v) + self.tau), {"m": m, "v": v}


@dataclass(frozen=True)
class FedAdam(_Adaptive):
    """Adam on the server: ``v ← β₂ v + (1 − β₂) Δ²`` (Reddi et al., 2021)."""

    name: ClassVar[str] = "fedadam"

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1.0 - self.beta2) * d2


@dataclass(frozen=True)
class FedYogi(_Adaptive):
    """Yogi on the server: ``v ← v − (1 − β₂) Δ² sign(v − Δ²)`` (Reddi et al., 2021)."""

    name: ClassVar[str] = "fedyogi"

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return v - (1.0 - self.beta2) * d2 * np.sign(v - d2)
