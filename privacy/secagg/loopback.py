"""Run a whole SecAgg+ round in one process: every phone and the server, no network.

For tests, benchmarks and simulations. Every message goes through the binary codec both
ways (so the codec is exercised and bytes are counted), and everything the server receives
is kept as its *transcript*. ``drop_before[u] = stage`` makes phone ``u`` vanish before it
answers that stage (and every later one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from . import codec
from .client import SecAggClient
from .errors import RejectReason, SecAggError, SecAggMessageRejected
from .messages import ClientMessage, ServerMessage, Stage
from .params import SecAggParams
from .server import SecAggServer

#: Hook to alter (or replace) a client's reply before the server sees it: returns the
#: message to deliver, or None to deliver nothing.
Tamper = Callable[[Stage, int, ClientMessage], ClientMessage | None]


@dataclass
class LoopbackResult:
    """Outcome of :func:`run_loopback`."""

    total: np.ndarray
    server: SecAggServer
    transcript: list[bytes] = field(default_factory=list)
    bytes_up: dict[int, int] = field(default_factory=dict)
    bytes_down: dict[int, int] = field(default_factory=dict)
    client_errors: dict[int, Exception] = field(default_factory=dict)
    #: the phones' state machines (their private state: for tests and diagnostics only)
    clients: dict[int, SecAggClient] = field(default_factory=dict)


def run_loopback(
    params: SecAggParams,
    inputs: Mapping[int, np.ndarray],
    *,
    drop_before: Mapping[int, Stage] | None = None,
    min_survivors: int | None = None,
    tamper: Tamper | None = None,
    tamper_request: Callable[[Stage, int, ServerMessage], ServerMessage] | None = None,
) -> LoopbackResult:
    """One round over ``params.participants`` with private ``inputs``; raises
    :class:`~.errors.SecAggAborted` when the round cannot complete."""
    drops = dict(drop_before or {})
    server = SecAggServer(params, min_survivors=min_survivors)
    clients = {u: SecAggClient(u) for u in params.participants}
    out = LoopbackResult(total=np.zeros(0, dtype=np.int64), server=server, clients=clients)
    out.bytes_up = dict.fromkeys(params.participants, 0)
    out.bytes_down = dict.fromkeys(params.participants, 0)
    while server.stage is not Stage.DONE:
        stage = server.stage
        for u, request in server.requests().items():
            if tamper_request is not None:
                request = tamper_request(stage, u, request)
            wire_down = codec.encode(request)
            out.bytes_down[u] += len(wire_down)
            if u in drops and drops[u] <= stage:
                continue
            if u in out.client_errors:
                continue
            try:
                reply = clients[u].handle(codec.decode_server_message(wire_down), inputs.get(u))
            except SecAggError as exc:  # the phone refused: it drops out
                out.client_errors[u] = exc
                continue
            delivered = tamper(stage, u, reply) if tamper is not None else reply
            if delivered is None:
                continue
            wire_up = codec.encode(delivered)
            out.bytes_up[u] += len(wire_up)
            out.transcript.append(wire_up)
            try:
                server.receive(
                    codec.decode_client_message(wire_up, getattr(delivered, "sender", u))
                )
            except SecAggMessageRejected:
                pass
            except codec.CodecError as exc:
                server.reject(u, RejectReason.MALFORMED, str(exc), drop=True)
        server.close_stage()
    out.total = server.result()
    return out
