"""SecAgg+ over Flower's Message API: Flower's own simulation end to end (slow), plus the
transport faults simulation cannot inject (error replies, undecodable content, silence)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict

from fedlora.privacy.secagg import RejectReason, SecAggAborted, SecAggParamsError
from fedlora.privacy.secagg.flower import (
    SECAGG_MESSAGE_TYPE,
    STATE_RECORD,
    SecAggConfig,
    SecAggDriver,
    handle_secagg_message,
    register_secagg,
    run_secagg,
)

LENGTH = 300


@pytest.fixture(autouse=True)
def _server_identity():
    """Messages built outside a running ServerApp need Flower's task identity set."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def phone_vector(node_id: int) -> np.ndarray:
    return np.random.default_rng(node_id % 2**32).integers(-1000, 1001, LENGTH)


def private_input(message: Message, context: Context) -> np.ndarray:
    if context.node_config.get("partition-id") == 2:
        raise ValueError("phone 2 lost its battery before Round 2")
    return phone_vector(int(message.metadata.dst_node_id))


class LoopbackGrid:
    """Just enough of ``flwr.serverapp.Grid`` to route messages to in-process phones and
    to inject faults; the end-to-end test below uses Flower's real simulation instead."""

    def __init__(
        self,
        node_ids: list[int],
        fault: Callable[[int, Message, Message], Message | None] | None = None,
    ) -> None:
        self.contexts = {
            n: Context(
                run_id=1,
                node_id=n,
                node_config={"partition-id": i},
                state=RecordDict(),
                run_config={},
            )
            for i, n in enumerate(node_ids)
        }
        self.fault = fault
        self.calls = 0

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        self.calls += 1
        out = []
        for m in messages:
            node = int(m.metadata.dst_node_id)
            assert m.metadata.message_type == SECAGG_MESSAGE_TYPE
            reply = handle_secagg_message(m, self.contexts[node], private_input)
            if self.fault is not None:
                reply = self.fault(self.calls, m, reply)
            if reply is not None:
                out.append(reply)
        return out


NODES = [10**19 + i for i in range(6)]  # uint64 ids beyond int64, as Flower may assign


def test_driver_over_loopback_grid_with_a_failing_phone() -> None:
    grid = LoopbackGrid(NODES)
    cfg = SecAggConfig(bits=32, coordinate_bound=1000)
    driver = SecAggDriver(grid, cfg.params_for(5, NODES, LENGTH))  # type: ignore[arg-type]
    total = driver.run()
    survivors = driver.server.survivors
    assert survivors == set(NODES) - {NODES[2]}
    np.testing.assert_array_equal(total, sum(phone_vector(n) for n in survivors))
    assert [r.reason for r in driver.server.rejections] == [RejectReason.ERROR_REPLY]
    assert "battery" in driver.server.rejections[0].detail
    # finished rounds leave no secret state behind on the phones
    assert all(STATE_RECORD not in c.state.config_records for c in grid.contexts.values())


def test_transport_faults_count_as_dropouts() -> None:
    nodes = [10**19 + i for i in range(8)]

    def fault(call: int, request: Message, reply: Message) -> Message | None:
        src = int(reply.metadata.src_node_id)
        if call == 1 and src == nodes[0]:
            return None  # timed out: no reply at all
        if call == 2 and src == nodes[1]:
            return Message(
                RecordDict({"fedlora.secagg": ConfigRecord({"body": b"junk"})}), reply_to=request
            )
        if call == 3 and src == nodes[3]:
            return Message(RecordDict(), reply_to=request)
        if call == 3 and src == nodes[4]:
            return Message(Error(code=1, reason="crashed"), reply_to=request)
        return reply

    grid = LoopbackGrid(nodes, fault)
    cfg = SecAggConfig(bits=32, coordinate_bound=1000, degree=7, threshold=2)
    driver = SecAggDriver(grid, cfg.params_for(9, nodes, LENGTH))  # type: ignore[arg-type]
    total = driver.run()
    assert driver.server.survivors == set(nodes[5:])
    np.testing.assert_array_equal(total, sum(phone_vector(n) for n in nodes[5:]))
    got = {(r.sender, r.reason) for r in driver.server.rejections}
    assert got == {
        (nodes[1], RejectReason.MALFORMED),
        (nodes[2], RejectReason.ERROR_REPLY),
        (nodes[3], RejectReason.MALFORMED),
        (nodes[4], RejectReason.ERROR_REPLY),
    }


def test_too_many_faults_abort_and_headroom_refuses_up_front() -> None:
    grid = LoopbackGrid(NODES, lambda call, m, r: None if call == 2 else r)
    with pytest.raises(SecAggAborted, match="SHARE_KEYS"):
        run_secagg(grid, NODES, LENGTH, SecAggConfig(coordinate_bound=1000), round_id=1)  # type: ignore[arg-type]
    with pytest.raises(SecAggParamsError, match="cannot hold"):
        run_secagg(grid, NODES, LENGTH, SecAggConfig(bits=16, coordinate_bound=10**4), round_id=1)  # type: ignore[arg-type]
    assert grid.calls == 2  # the refused round sent nothing


def test_phone_handler_answers_stray_messages_with_errors() -> None:
    ctx = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    junk = Message(
        RecordDict({"fedlora.secagg": ConfigRecord({"body": b"FSA1\x03"})}),
        dst_node_id=7,
        message_type=SECAGG_MESSAGE_TYPE,
    )
    reply = handle_secagg_message(junk, ctx, private_input)
    assert reply.has_error() and "truncated" in (reply.error.reason or "")
    from fedlora.privacy.secagg import codec
    from fedlora.privacy.secagg.messages import ShareKeysRequest

    body = codec.encode(ShareKeysRequest(round_id=3, public_keys={}))
    stray = Message(
        RecordDict({"fedlora.secagg": ConfigRecord({"body": body})}),
        dst_node_id=7,
        message_type=SECAGG_MESSAGE_TYPE,
    )
    reply = handle_secagg_message(stray, ctx, private_input)
    assert reply.has_error() and "no secure-aggregation state for round 3" in (
        reply.error.reason or ""
    )


@pytest.mark.slow
def test_flower_simulation_end_to_end() -> None:
    pytest.importorskip("ray")
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    client_app = ClientApp()
    register_secagg(client_app, private_input)
    server_app = ServerApp()
    out: dict[str, object] = {}

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        deadline = time.monotonic() + 60
        ids: list[int] = []
        while len(ids) < 7 and time.monotonic() < deadline:
            ids = sorted(grid.get_node_ids())
            time.sleep(0.05)
        cfg = SecAggConfig(bits=32, coordinate_bound=1000)
        driver = SecAggDriver(grid, cfg.params_for(1, ids, LENGTH), timeout=120)
        try:
            out["total"] = driver.run()
        except Exception as exc:  # surfaced to the test thread below
            out["error"] = exc
        out["ids"], out["survivors"], out["rejections"] = (
            ids,
            driver.server.survivors,
            driver.server.rejections,
        )

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=7,
        backend_config={"client_resources": {"num_cpus": 1}},
    )
    assert "error" not in out, out.get("error")
    ids, survivors = out["ids"], out["survivors"]
    assert isinstance(ids, list) and isinstance(survivors, set) and len(ids) == 7
    assert len(survivors) == 6  # partition 2 failed before Round 2
    total = out["total"]
    assert isinstance(total, np.ndarray)
    np.testing.assert_array_equal(total, sum(phone_vector(n) for n in survivors))
    assert [r.reason for r in out["rejections"]] == [RejectReason.ERROR_REPLY]  # type: ignore[union-attr]
