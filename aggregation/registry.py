"""Config names → implementations (``fedlora.config.AggregationSettings``).

``rule``: rank_fedavg | hetlora | ffa | flexlora | fedsa | flora;
``server_optimizer``: fedavg | fedavgm | fedadam | fedyogi.

The tables are read-only (``MappingProxyType``): no global mutable state. Under secure
aggregation, ``flexlora`` becomes its dense-upload variant (linear) and ``flora`` is refused
with the reason (:class:`~fedlora.aggregation.errors.NotLinearError`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from fedlora.adapter import LoraAdapter
from fedlora.config import AggregationSettings
from fedlora.errors import ConfigError

from .base import Aggregator
from .contribution import AggregationSpec
from .errors import NotLinearError
from .fedsa import FedSALoRA
from .ffa import FFALoRA
from .flexlora import FlexLoRA
from .flora import FLoRA
from .hetlora import HetLoRA
from .optimizers import FedAdam, FedAvg, FedAvgM, FedYogi, ServerOptimizer
from .rank_fedavg import RankFedAvg
from .redistribute import redistribute


@dataclass(frozen=True)
class RuleInfo:
    """What a rule promises, by config name (``linear`` as used without secure aggregation;
    ``linear_secure``: whether it runs on secure sums at all)."""

    name: str
    linear: bool
    linear_secure: bool
    exact: bool
    nested: bool
    needs_views: bool


RULES: Mapping[str, RuleInfo] = MappingProxyType(
    {
        "rank_fedavg": RuleInfo("rank_fedavg", True, True, False, True, False),
        "hetlora": RuleInfo("hetlora", True, True, False, True, False),
        "ffa": RuleInfo("ffa", True, True, True, True, False),
        "flexlora": RuleInfo("flexlora", False, True, True, False, True),
        "fedsa": RuleInfo("fedsa", True, True, False, True, False),
        "flora": RuleInfo("flora", False, False, True, False, True),
    }
)

OPTIMIZERS: tuple[str, ...] = ("fedavg", "fedavgm", "fedadam", "fedyogi")

#: Noise modes that add noise to the *sum* of the phones' vectors (on the server, or in
#: shares that only reach their target variance once summed).
SUM_NOISE_MODES: tuple[str, ...] = ("central", "distributed")


def _rule_name(rule: str | AggregationSettings) -> str:
    name = rule.rule if isinstance(rule, AggregationSettings) else rule
    if name not in RULES:
        raise ConfigError(
            [f"aggregation.rule: unknown rule {name!r}; allowed values: {', '.join(RULES)}"]
        )
    return name


def needs_each_phone(rule: str | AggregationSettings) -> bool:
    """Whether the rule aggregates each phone's update separately and runs on no sum at all
    (``flora``): phones then upload their own delta and the server accumulates them one by
    one (docs/aggregation.md, "Rules that need each phone")."""
    return not RULES[_rule_name(rule)].linear_secure


def per_phone_privacy_problems(
    rule: str | AggregationSettings, *, secure_aggregation: bool, noise: str
) -> list[str]:
    """Why these privacy settings cannot run with ``rule`` (empty when they can).

    A rule that needs each phone's update (:func:`needs_each_phone`) has no sum: secure
    aggregation would hide exactly what it needs, and ``central`` / ``distributed`` noise
    protect a sum that never exists. Only ``none`` and ``local`` noise apply.
    """
    name = _rule_name(rule)
    if not needs_each_phone(name):
        return []
    problems: list[str] = []
    if secure_aggregation:
        problems.append(
            f"privacy.secure_aggregation: rule {name!r} cannot run under secure aggregation "
            f"(the server would only see a sum of the phones' vectors): {FLoRA.why_not_linear}"
        )
    if noise in SUM_NOISE_MODES:
        problems.append(
            f"privacy.noise: {noise!r} noise is added to the sum of the phones' vectors, but "
            f"rule {name!r} aggregates each phone's own update and never forms a sum; use "
            "noise 'local' (every phone fully privatizes its own upload) or 'none', or a rule "
            "that runs on sums"
        )
    return problems


def make_aggregator(
    rule: str | AggregationSettings,
    spec: AggregationSpec,
    *,
    secure_aggregation: bool = False,
    starting_views: Mapping[int, LoraAdapter] | None = None,
    community: LoraAdapter | None = None,
) -> Aggregator[Any]:
    """The aggregator for a config name (or settings).

    Product rules (flexlora, flora) need the views phones trained from: pass
    ``starting_views`` (rank → adapter), or ``community`` to recompute them by SVD.
    """
    name = _rule_name(rule)
    if name == "flora" and secure_aggregation:
        raise NotLinearError("flora", FLoRA.why_not_linear)
    if RULES[name].needs_views and starting_views is None and community is not None:
        starting_views = {
            r: v.adapter for r, v in redistribute(community, spec.ranks, nested=False).items()
        }
    if name == "rank_fedavg":
        return RankFedAvg(spec)
    if name == "hetlora":
        return HetLoRA(spec)
    if name == "ffa":
        return FFALoRA(spec)
    if name == "fedsa":
        return FedSALoRA(spec)
    if name == "flexlora":
        return FlexLoRA(spec, starting_views, dense_upload=secure_aggregation)
    return FLoRA(spec, starting_views)


def make_sum_aggregator(
    rule: str | AggregationSettings,
    spec: AggregationSpec,
    *,
    starting_views: Mapping[int, LoraAdapter] | None = None,
    community: LoraAdapter | None = None,
) -> Aggregator[Any]:
    """The rule in the form a round that transports *sums* needs — its linear form
    (``flexlora``: dense upload) whether the sum is secure or plain: phones encode for it and
    the server reads the sum with it. Rules without a linear form (``flora``) refuse
    (:class:`~fedlora.aggregation.errors.NotLinearError`): they travel per phone
    (:func:`needs_each_phone`)."""
    return make_aggregator(
        rule, spec, secure_aggregation=True, starting_views=starting_views, community=community
    )


def make_server_optimizer(settings: AggregationSettings | str) -> ServerOptimizer:
    """The server optimizer for ``settings.server_optimizer`` with its hyper-parameters."""
    s = (
        settings
        if isinstance(settings, AggregationSettings)
        else AggregationSettings.model_validate({})
    )
    name = settings if isinstance(settings, str) else settings.server_optimizer
    if name == "fedavg":
        return FedAvg(lr=s.server_lr)
    if name == "fedavgm":
        return FedAvgM(lr=s.server_lr, momentum=s.momentum)
    if name == "fedadam":
        return FedAdam(lr=s.server_lr, beta1=s.beta1, beta2=s.beta2, tau=s.tau)
    if name == "fedyogi":
        return FedYogi(lr=s.server_lr, beta1=s.beta1, beta2=s.beta2, tau=s.tau)
    raise ConfigError(
        [
            f"aggregation.server_optimizer: unknown optimizer {name!r}; "
            f"allowed values: {', '.join(OPTIMIZERS)}"
        ]
    )
