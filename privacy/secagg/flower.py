"""SecAgg+ over Flower's Message API (flwr ≥ 1.20: ``flwr.serverapp.Grid``, ``flwr.app``).

A thin transport around the pure state machines:

* server side, :func:`run_secagg` (inside a ``ServerApp`` main): builds the round's public
  parameters, sends each stage's requests with ``grid.send_and_receive`` and feeds the
  replies into :class:`~.server.SecAggServer`. A reply that is an error, undecodable, or
  late (``timeout``) counts as a dropout; every refusal is recorded on the server object.
  Returns the exact signed sum of the survivors or raises
  :class:`~.errors.SecAggAborted` — it never halts silently;
* phone side, :func:`handle_secagg_message` (inside a ``ClientApp`` handler): keeps the
  phone's :class:`~.client.SecAggClient` in ``Context.state`` (local to the phone, per run,
  keyed by the round id) and answers each stage; the private input vector is obtained
  from ``private_input(message, context)`` only in Round 2. :func:`register_secagg` wires
  it into a ``ClientApp`` as ``@app.train("secagg")``.

Wire: ``RecordDict{"fedlora.secagg": ConfigRecord{"stage", "round", "body"}}`` where body is
the :mod:`.codec` encoding; the masked vector of Round 2 travels as an ``ArrayRecord``
(``"fedlora.secagg.vector"``) so Flower can chunk it. Node ids (uint64) never pass through
ConfigRecord integers (sint64): they live inside the codec bytes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from . import codec
from .client import SecAggClient
from .errors import RejectReason, SecAggError, SecAggMessageRejected
from .messages import AdvertiseKeysRequest, ClientMessage, MaskedInput, ServerMessage, Stage
from .params import (
    DEFAULT_CORRUPT_FRACTION,
    DEFAULT_DROPOUT_FRACTION,
    DEFAULT_ETA,
    DEFAULT_SIGMA,
    SecAggParams,
)
from .server import SecAggServer

log = logging.getLogger(__name__)

SECAGG_ACTION = "secagg"
SECAGG_MESSAGE_TYPE = f"train.{SECAGG_ACTION}"
RECORD = "fedlora.secagg"
VECTOR_RECORD = "fedlora.secagg.vector"
STATE_RECORD = "fedlora.secagg.state"
ERROR_CODE = 4601

PrivateInputFn = Callable[[Message, Context], np.ndarray]


@dataclass(frozen=True)
class SecAggConfig:
    """Round-independent settings of secure aggregation (see :mod:`.params`)."""

    bits: int = 32
    coordinate_bound: int = (1 << 20) - 1
    corrupt_fraction: float = DEFAULT_CORRUPT_FRACTION
    dropout_fraction: float = DEFAULT_DROPOUT_FRACTION
    sigma: int = DEFAULT_SIGMA
    eta: int = DEFAULT_ETA
    degree: int | None = None
    threshold: int | None = None
    min_survivors: int | None = None

    def params_for(self, round_id: int, node_ids: Sequence[int], vector_len: int) -> SecAggParams:
        return SecAggParams.create(
            round_id,
            node_ids,
            vector_len,
            bits=self.bits,
            coordinate_bound=self.coordinate_bound,
            corrupt_fraction=self.corrupt_fraction,
            dropout_fraction=self.dropout_fraction,
            sigma=self.sigma,
            eta=self.eta,
            degree=self.degree,
            threshold=self.threshold,
        )


# ---------------------------------------------------------------------------- wire
def _content(msg: ServerMessage | ClientMessage) -> RecordDict:
    vector = None
    if isinstance(msg, MaskedInput):
        vector = np.ascontiguousarray(msg.masked)
        msg = dataclasses.replace(msg, masked=np.zeros(0, dtype=vector.dtype))
    rd = RecordDict(
        {
            RECORD: ConfigRecord(
                {"stage": int(msg.stage), "round": int(msg.round_id), "body": codec.encode(msg)}
            )
        }
    )
    if vector is not None:
        rd[VECTOR_RECORD] = ArrayRecord({"y": Array(vector)})
    return rd


def _body(content: RecordDict) -> bytes:
    rec = content.config_records.get(RECORD) if RECORD in content.config_records else None
    body = rec.get("body") if rec is not None else None
    if not isinstance(body, bytes):
        raise codec.CodecError(f"no {RECORD!r} ConfigRecord with a bytes 'body'")
    return body


def decode_reply(content: RecordDict, sender: int) -> ClientMessage:
    """A phone's reply content → client message (raises ``CodecError``)."""
    msg = codec.decode_client_message(_body(content), sender)
    if isinstance(msg, MaskedInput):
        if (
            VECTOR_RECORD not in content.array_records
            or "y" not in content.array_records[VECTOR_RECORD]
        ):
            raise codec.CodecError("masked input without its vector ArrayRecord")
        y = content.array_records[VECTOR_RECORD]["y"].numpy()
        msg = dataclasses.replace(msg, masked=y)
    return msg


# ---------------------------------------------------------------------------- server
class SecAggDriver:
    """Runs one SecAgg+ round over a Flower ``Grid``; ``.server`` keeps the record."""

    def __init__(
        self,
        grid: Grid,
        params: SecAggParams,
        *,
        timeout: float | None = None,
        message_type: str = SECAGG_MESSAGE_TYPE,
        min_survivors: int | None = None,
    ) -> None:
        self.grid = grid
        self.params = params
        self.timeout = timeout
        self.message_type = message_type
        self.server = SecAggServer(params, min_survivors=min_survivors)

    def run(self) -> np.ndarray:
        server = self.server
        while server.stage is not Stage.DONE:
            stage = server.stage
            requests = server.requests()
            messages = [
                Message(
                    content=_content(req),
                    dst_node_id=node,
                    message_type=self.message_type,
                    group_id=str(self.params.round_id),
                )
                for node, req in requests.items()
            ]
            replies = list(self.grid.send_and_receive(messages, timeout=self.timeout))
            for reply in replies:
                self._absorb(reply)
            log.debug(
                "secagg round %s stage %s: %d asked, %d replies, %d rejections so far",
                self.params.round_id,
                stage.name,
                len(requests),
                len(replies),
                len(server.rejections),
            )
            server.close_stage()
        return server.result()

    def _absorb(self, reply: Message) -> None:
        server = self.server
        sender = int(reply.metadata.src_node_id)
        if reply.has_error():
            server.reject(
                sender, RejectReason.ERROR_REPLY, f"error reply: {reply.error.reason}", drop=True
            )
            return
        try:
            msg = decode_reply(reply.content, sender)
        except Exception as exc:  # undecodable content must not crash the server
            server.reject(sender, RejectReason.MALFORMED, f"{type(exc).__name__}: {exc}", drop=True)
            return
        try:
            server.receive(msg)
        except SecAggMessageRejected as exc:
            log.warning("%s", exc)


def run_secagg(
    grid: Grid,
    node_ids: Sequence[int],
    vector_len: int,
    config: SecAggConfig,
    *,
    round_id: int,
    timeout: float | None = None,
    message_type: str = SECAGG_MESSAGE_TYPE,
) -> np.ndarray:
    """Securely sum the phones' int vectors of length ``vector_len``: returns the exact
    signed int64 sum over the survivors, or raises ``SecAggAborted``/``SecAggParamsError``
    (the latter before any message is sent)."""
    params = config.params_for(round_id, node_ids, vector_len)
    driver = SecAggDriver(
        grid, params, timeout=timeout, message_type=message_type, min_survivors=config.min_survivors
    )
    return driver.run()


# ---------------------------------------------------------------------------- phone
def _load_state(context: Context, round_id: int) -> SecAggClient | None:
    rec = (
        context.state.config_records.get(STATE_RECORD)
        if STATE_RECORD in context.state.config_records
        else None
    )
    if rec is None or rec.get("round") != round_id or not isinstance(rec.get("state"), bytes):
        return None
    state = rec["state"]
    assert isinstance(state, bytes)
    return SecAggClient.from_bytes(state)


def _save_state(context: Context, round_id: int, client: SecAggClient | None) -> None:
    if client is None or client.stage is Stage.DONE:
        if STATE_RECORD in context.state.config_records:
            del context.state.config_records[STATE_RECORD]
        return
    context.state.config_records[STATE_RECORD] = ConfigRecord(
        {"round": round_id, "state": client.to_bytes()}
    )


def handle_secagg_message(
    message: Message, context: Context, private_input: PrivateInputFn
) -> Message:
    """Answer one SecAgg+ stage message on the phone; errors become error replies."""
    round_id = -1
    try:
        request = codec.decode_server_message(_body(message.content))
        round_id = request.round_id
        if isinstance(request, AdvertiseKeysRequest):
            client: SecAggClient | None = SecAggClient(int(message.metadata.dst_node_id))
        else:
            client = _load_state(context, round_id)
            if client is None:
                raise SecAggMessageRejected(
                    None,
                    request.stage.name,
                    RejectReason.WRONG_ROUND,
                    f"no secure-aggregation state for round {round_id} on this phone",
                )
        assert client is not None
        reply = client.handle(request, lambda: private_input(message, context))
        _save_state(context, round_id, client)
        return Message(_content(reply), reply_to=message)
    except Exception as exc:  # refuse, forget the round's secrets, tell the server
        if round_id >= 0:
            _save_state(context, round_id, None)
        kind = "" if isinstance(exc, SecAggError | codec.CodecError) else f"{type(exc).__name__}: "
        return Message(Error(code=ERROR_CODE, reason=f"{kind}{exc}"), reply_to=message)


def register_secagg(
    app: ClientApp, private_input: PrivateInputFn, action: str = SECAGG_ACTION
) -> None:
    """Register ``@app.train(action)`` answering every SecAgg+ stage."""

    @app.train(action)
    def _secagg(message: Message, context: Context) -> Message:
        return handle_secagg_message(message, context, private_input)
