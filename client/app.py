"""The phone's Flower ClientApp (Message API).

Handlers:

* ``query`` — the phone's capabilities (the rank it can train), asked once per node;
* ``train`` — one round: verify and load the community view, train locally (or decline
  with a status if the device policy says no), encode + privatize the delta, and either reply
  with the privatized vector (no secure aggregation) or keep it in the node's state for the
  SecAgg+ stages that follow (``train.secagg``), so it only ever leaves the phone masked;
* ``train.secagg`` — the SecAgg+ stages (:mod:`fedlora.privacy.secagg.flower`).

Settings come from the factory argument (simulation) or from the run config key
``fedlora-config`` (a TOML path) plus ``fedlora-set`` overrides (deployment). A phone's
private data is found by ``partition-id`` (simulation) or ``client-id`` / ``data-dir`` in the
node config (deployment).

Simulated device populations (:mod:`fedlora.simulations.population`) steer a phone through an
optional ``conditions(message, context) -> PhoneConditions`` hook: its rank tier, whether
it may train now (else it answers with a report such as ``not_allowed`` or ``deadline``),
and whether it has vanished (it then answers every message of the round with an error
reply, which the server counts as a dropout — inside Ray a phone cannot simply stay
silent). Deployments pass no hook; real phones decide through their device policy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp

from fedlora.adapter import LoraAdapter
from fedlora.client.contribute import prepare_contribution
from fedlora.config import DataSettings, FedloraSettings, settings_from_run_config
from fedlora.data.federated import ClientData, FederatedDataset
from fedlora.data.from_settings import load_federation
from fedlora.errors import FedloraError
from fedlora.privacy.dp import RoundContext
from fedlora.privacy.secagg.flower import (
    SECAGG_ACTION,
    STATE_RECORD,
    handle_secagg_message,
)
from fedlora.privacy.secagg.prg import word_dtype
from fedlora.protocol import (
    COMMUNITY,
    PRIVACY,
    REPORT,
    ROUND,
    VECTOR,
    PhoneReport,
    RoundInstructions,
)
from fedlora.records import get_adapter

log = logging.getLogger(__name__)

PENDING = "fedlora.pending"
CAPABILITIES = "fedlora.capabilities"
PHONE_METRICS = "fedlora.phone_metrics"


@dataclass(frozen=True)
class PhoneIdentity:
    """Which phone this node is and what it can do."""

    client_id: str
    max_rank: int


@dataclass(frozen=True)
class RoundOutcome:
    """A phone's training result: the delta (None if it did not train) and its report.

    ``metrics`` are extra numbers / short strings the trainer chooses to publish with the
    reply (record ``fedlora.phone_metrics``); the deployment trainer publishes none, a
    simulation says which local trainer ran (``trainer``: ``vectorized`` | ``peft``).
    """

    delta: LoraAdapter | None
    report: PhoneReport
    metrics: Mapping[str, int | float | str] = field(default_factory=dict)


RoundTrainer = Callable[
    [RoundInstructions, LoraAdapter, ClientData, FedloraSettings, Context], RoundOutcome
]

VANISHED_CODE = 4610
"""Error code of the reply a vanished (simulated) phone gives instead of an answer."""


@dataclass(frozen=True)
class PhoneConditions:
    """How a simulated phone behaves for one message; the defaults change nothing.

    * ``max_rank`` — the rank tier to announce (None: node config / settings decide);
    * ``answer`` — reply with this report instead of training (``not_allowed``,
      ``deadline``); only consulted for ``train`` messages;
    * ``vanish`` — the phone has dropped out: an error reply and its round state forgotten.
    """

    max_rank: int | None = None
    answer: PhoneReport | None = None
    vanish: bool = False


ConditionsFn = Callable[[Message, Context], PhoneConditions]
"""Decides a simulated phone's :class:`PhoneConditions` from the message and its context."""


@lru_cache(maxsize=4)
def _federation(data_json: str) -> FederatedDataset:
    """Explicit per-process cache: the (deterministic) federation is built once per worker."""
    return load_federation(DataSettings.model_validate_json(data_json))


def phone_data(settings: FedloraSettings, context: Context) -> ClientData:
    fed = _federation(settings.data.model_dump_json())
    node = context.node_config
    ids = fed.client_ids
    if "client-id" in node:
        cid = str(node["client-id"])
        if cid not in fed.clients:
            raise FedloraError(
                f"node config client-id {cid!r} has no data in {settings.data.source}"
            )
        return fed.clients[cid]
    if "partition-id" in node:
        pid = int(node["partition-id"])
        return fed.clients[ids[pid % len(ids)]]
    raise FedloraError("node config names no 'partition-id' or 'client-id': whose data is this?")


def phone_identity(settings: FedloraSettings, context: Context) -> PhoneIdentity:
    """The phone's rank tier: node config ``rank`` if given, else from its partition."""
    node = context.node_config
    data = phone_data(settings, context)
    if "rank" in node:
        rank = int(node["rank"])
    else:
        tiers = sorted(settings.simulation.ranks)
        pid = int(node.get("partition-id", 0))
        rank = tiers[pid % len(tiers)]
    return PhoneIdentity(client_id=data.client_id, max_rank=rank)


def _reply(message: Message, report: PhoneReport, extra: dict[str, Any] | None = None) -> Message:
    content = RecordDict({REPORT: report.to_record()})
    for k, v in (extra or {}).items():
        content[k] = v
    return Message(content=content, reply_to=message)


def _forget_round(context: Context) -> None:
    """Drop the pending vector and SecAgg secrets: they are needed for one round only, and a
    simulation keeps every phone's context in the driver process."""
    for key in (PENDING, PENDING + ".round", STATE_RECORD):
        if key in context.state:
            del context.state[key]


def _vanished(message: Message, context: Context) -> Message:
    _forget_round(context)
    return Message(Error(code=VANISHED_CODE, reason="phone vanished"), reply_to=message)


def make_client_app(
    settings: FedloraSettings | None = None,
    trainer: RoundTrainer | None = None,
    *,
    conditions: ConditionsFn | None = None,
) -> ClientApp:
    """A ClientApp with fixed settings (simulation) or settings from the run config;
    ``conditions`` lets a simulated device population steer each phone (module docstring)."""
    app = ClientApp()

    def _conditions(message: Message, context: Context) -> PhoneConditions:
        return conditions(message, context) if conditions is not None else PhoneConditions()

    def _settings(context: Context) -> FedloraSettings:
        return settings if settings is not None else settings_from_run_config(context.run_config)

    def _trainer() -> RoundTrainer:
        if trainer is not None:
            return trainer
        from fedlora.client.round_training import train_round

        return train_round

    @app.query()
    def capabilities(message: Message, context: Context) -> Message:
        cond = _conditions(message, context)
        if cond.vanish:
            return _vanished(message, context)
        max_rank = cond.max_rank
        if max_rank is None:
            max_rank = phone_identity(_settings(context), context).max_rank
        record = ConfigRecord({"max_rank": max_rank})
        return Message(content=RecordDict({CAPABILITIES: record}), reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        started = time.perf_counter()
        for key in (PENDING, PENDING + ".round"):  # never reuse a previous round's vector
            if key in context.state:
                del context.state[key]
        cond = _conditions(message, context)
        if cond.vanish:
            return _vanished(message, context)
        if cond.answer is not None:
            return _reply(message, cond.answer)
        s = _settings(context)
        content = message.content
        instr = RoundInstructions.from_record(content.config_records.get(ROUND))
        ctx = RoundContext.from_config(dict(content.config_records[PRIVACY]))
        community = get_adapter(content, COMMUNITY)
        data = phone_data(s, context)
        outcome = _trainer()(instr, community, data, s, context)
        report = outcome.report
        extra: dict[str, Any] = {}
        if outcome.metrics:
            extra[PHONE_METRICS] = ConfigRecord(dict(outcome.metrics))
        if outcome.delta is None or report.status != "trained":
            return _reply(message, report, extra)
        prepared = prepare_contribution(
            outcome.delta,
            community,
            instr,
            ctx,
            num_examples=report.num_examples,
            phone_id=data.client_id,
        )
        report = replace(report, seconds=time.perf_counter() - started)
        if prepared.secure:
            context.state[PENDING] = ArrayRecord({"vector": Array(prepared.vector)})
            context.state[PENDING + ".round"] = ConfigRecord({"round": instr.round})
            # what it will upload in SecAgg stage 2: the masked vector, one ring word a value
            word = word_dtype(ctx.modulus_bits or 64).itemsize
            report = replace(report, bytes_up=int(prepared.vector.size * word))
            return _reply(message, report, extra)
        vec = ArrayRecord({"vector": Array(prepared.vector)})
        report = replace(report, bytes_up=int(prepared.vector.nbytes))
        return _reply(message, report, {VECTOR: vec, **extra})

    def private_input(message: Message, context: Context) -> np.ndarray:
        pending = context.state.get(PENDING)
        meta = context.state.get(PENDING + ".round")
        if not isinstance(pending, ArrayRecord) or not isinstance(meta, ConfigRecord):
            raise FedloraError("secure aggregation asked for an input, but this phone has none")
        vec: np.ndarray = pending["vector"].numpy()
        for key in (PENDING, PENDING + ".round"):  # masked and sent: no longer needed
            del context.state[key]
        return vec

    @app.train(SECAGG_ACTION)
    def secagg(message: Message, context: Context) -> Message:
        if _conditions(message, context).vanish:
            return _vanished(message, context)
        return handle_secagg_message(message, context, private_input)

    return app


# Deployment entry point: `flwr run` / SuperNodes load "fedlora.client.app:app".
app = make_client_app()
