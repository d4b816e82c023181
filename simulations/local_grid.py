"""An in-process Flower ``Grid``: the real ClientApp and ServerApp, no SuperLink, no Ray.

Flower's simulation engine (Ray) is what ``fedlora simulate`` uses. For tests that must
control exactly when a phone vanishes, for crash tests that kill the server process, and
for measuring the framework's own overhead, this grid calls ``client_app(message, context)``
directly for each addressed node, keeping one :class:`~flwr.app.Context` per node across
messages (as a SuperNode does). A node can be told to *vanish* before answering a given kind
of message (``drop``): it then never replies, exactly like a phone that lost connectivity.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

#: ``drop(node_id, message) -> True`` makes that node vanish instead of answering.
DropRule = Callable[[int, Message], bool]


class LocalGrid(Grid):
    """Delivers messages to in-process ClientApps; replies are collected synchronously."""

    def __init__(
        self,
        client_app: ClientApp,
        node_configs: Mapping[int, Mapping[str, str | int | float | bool]],
        *,
        run_id: int = 1,
        run_config: Mapping[str, str | int | float | bool] | None = None,
        drop: DropRule | None = None,
    ) -> None:
        self._app = client_app
        self._run = Run.create_empty(run_id)
        # What Flower's ServerApp runtime does before calling `main`: messages built with
        # the `Message` constructor take their source and run from this process identity.
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
        self._contexts = {
            int(node): Context(
                run_id=run_id,
                node_id=int(node),
                node_config=dict(cfg),
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for node, cfg in node_configs.items()
        }
        self._drop = drop
        self._replies: dict[str, Message] = {}
        self.delivered: list[tuple[int, str]] = []

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids: list[str] = []
        for msg in messages:
            msg_id = str(uuid4())
            msg.metadata.__dict__["_message_id"] = msg_id
            msg.metadata.__dict__["_run_id"] = self._run.run_id
            ids.append(msg_id)
            node = int(msg.metadata.dst_node_id)
            if node not in self._contexts:
                continue  # unknown node: no reply, as with a SuperLink
            if self._drop is not None and self._drop(node, msg):
                continue
            self.delivered.append((node, msg.metadata.message_type))
            reply = self._app(msg, self._contexts[node])
            self._replies[msg_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        started = time.monotonic()
        ids = list(self.push_messages(messages))
        replies = list(self.pull_messages(ids))
        if timeout is not None and time.monotonic() - started > timeout:
            return []  # everything arrived too late: the round's deadline passed
        return replies
