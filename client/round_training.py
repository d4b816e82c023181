"""One round of local training behind the ClientApp: a thin adapter onto :class:`PhoneSession`.

The ClientApp's trainer signature is ``(instructions, community, ClientData, settings,
Context) → RoundOutcome``; everything else — base loaded once per process and shared,
device policy, data hygiene, memory planning, resumable training, rule-specific phone
behaviour (FFA, FedSA), the delta in the instructed rank's layout — is the session's.

Node config keys (deployment; all optional):

* ``device-probe`` = ``sysfs`` — check the device policy with the real
  :class:`~fedlora.client.device_probe.SysfsProbe` (simulations leave it out: no policy);
* ``state-dir`` — the phone's private directory for resumable state and FedSA's personal B.
"""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context

from fedlora.adapter import LoraAdapter
from fedlora.client.app import RoundOutcome
from fedlora.client.device_probe import SysfsProbe
from fedlora.client.policy import DeviceProbe
from fedlora.client.session import PhoneOptions, PhoneSession
from fedlora.client.session import RoundOutcome as SessionOutcome
from fedlora.config import FedloraSettings
from fedlora.data.federated import ClientData
from fedlora.protocol import RoundInstructions

_SESSION = PhoneSession()


def train_round(
    instr: RoundInstructions,
    community: LoraAdapter,
    data: ClientData,
    settings: FedloraSettings,
    context: Context,
) -> RoundOutcome:
    """The deployment trainer: plain PEFT, nothing but the report in the reply."""
    outcome = session_round(instr, community, data, settings, context)
    return RoundOutcome(delta=outcome.delta, report=outcome.report)


def session_round(
    instr: RoundInstructions,
    community: LoraAdapter,
    data: ClientData,
    settings: FedloraSettings,
    context: Context,
    options: PhoneOptions | None = None,
) -> SessionOutcome:
    """One round through this process's :class:`PhoneSession` (``options``: the session's
    defaults; a simulation passes a vectorized local trainer)."""
    node = context.node_config
    probe: DeviceProbe | None = SysfsProbe("/") if node.get("device-probe") == "sysfs" else None
    state_dir = node.get("state-dir")
    outcome = _SESSION.run_round(
        instr,
        community,
        data.train,
        settings,
        probe=probe,
        state_dir=Path(str(state_dir)) if state_dir else None,
        heldout_texts=data.heldout or None,
        options=options,
    )
    return outcome
