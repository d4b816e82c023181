"""Run configuration: typed settings loaded from TOML and overridable from the command line.

One :class:`FedloraSettings` describes a whole run (model, LoRA, client, privacy,
aggregation, server, data, simulation). Every field has a type and an allowed range; a bad
value is a :class:`~fedlora.errors.ConfigError` whose message names the dotted key, the
allowed range or choices and the value given — never a stack trace from deep inside a run.

Overrides use dotted keys with TOML literals (``privacy.clip_norm=0.5``,
``lora.target_modules=["q_proj","v_proj"]``); a bare word that is not a TOML literal is
taken as a string.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import annotated_types as at
import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fedlora.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(Section):
    """Which frozen base model phones load, and how."""

    base: str = Field("default", description="'default', a local model directory or a hub id")
    quantization: Literal["none", "bf16", "int8", "nf4"] = "none"
    double_quant: bool = Field(True, description="nf4 only: quantize the quantization constants")
    max_seq_len: int = Field(96, ge=8, le=32768, description="tokens per training example")


class LoraSettings(Section):
    """LoRA shape. ``alpha`` is given at ``rank``; other ranks keep alpha/r constant."""

    rank: int = Field(8, ge=1, le=1024)
    alpha: float = Field(16.0, gt=0, le=65536)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], min_length=1
    )


class ClientSettings(Section):
    """Local training on the phone."""

    device: str = Field("auto", description="auto|cpu|cuda|mps|xpu|<torch accelerator>")
    local_steps: int = Field(10, ge=1, le=1_000_000)
    batch_size: int = Field(8, ge=1, le=65536)
    micro_batch_size: int | None = Field(None, ge=1, le=65536)
    learning_rate: float = Field(3e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0, le=1)
    gradient_checkpointing: bool = False
    memory_budget_mb: int | None = Field(None, ge=16, le=10_000_000)
    checkpoint_every: int = Field(0, ge=0, description="save resumable state every K steps; 0=off")
    cooling_every: int = Field(0, ge=0, description="pause every N steps; 0=off")
    cooling_seconds: float = Field(0.0, ge=0, le=3600)
    round_deadline_s: float | None = Field(None, gt=0)
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _micro_divides_batch(self) -> ClientSettings:
        mb = self.micro_batch_size
        if mb is not None and (mb > self.batch_size or self.batch_size % mb):
            raise ValueError(f"micro_batch_size ({mb}) must divide batch_size ({self.batch_size})")
        return self


class PrivacySettings(Section):
    """Clipping, noise, accounting and secure aggregation of adapter deltas."""

    noise: Literal["none", "local", "distributed", "central"] = "none"
    clip_norm: float = Field(1.0, gt=0, le=1e6)
    noise_multiplier: float = Field(1.0, ge=0, le=1000)
    adaptive_clipping: bool = False
    target_quantile: float = Field(0.5, gt=0, lt=1)
    clip_learning_rate: float = Field(0.2, gt=0, le=10)
    delta: float = Field(1e-5, gt=0, lt=1)
    epsilon_budget: float | None = Field(None, gt=0)
    secure_aggregation: bool = False
    secagg_bits: int = Field(32, ge=8, le=62, description="modulus 2^bits for masked sums")
    honest_fraction: float = Field(0.5, gt=0, le=1, description="distributed noise assumption")


class AggregationSettings(Section):
    """How the server fuses rank-tagged contributions, and its optimizer."""

    rule: Literal["rank_fedavg", "hetlora", "ffa", "flexlora", "fedsa", "flora"] = "rank_fedavg"
    server_optimizer: Literal["fedavg", "fedavgm", "fedadam", "fedyogi"] = "fedavg"
    server_lr: float = Field(1.0, gt=0, le=100)
    momentum: float = Field(0.9, ge=0, lt=1)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0, le=1)


class ServerSettings(Section):
    """The round loop, registry and hub."""

    rounds: int = Field(10, ge=1, le=1_000_000)
    clients_per_round: int = Field(10, ge=1, le=1_000_000)
    min_clients: int = Field(2, ge=1, le=1_000_000)
    round_timeout_s: float = Field(600.0, gt=0)
    database_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in home")
    blob_dir: str | None = None
    hub_host: str = "127.0.0.1"
    hub_port: int = Field(8080, ge=1, le=65535)

    @model_validator(mode="after")
    def _min_le_per_round(self) -> ServerSettings:
        if self.min_clients > self.clients_per_round:
            raise ValueError(
                f"min_clients ({self.min_clients}) must be <= clients_per_round "
                f"({self.clients_per_round})"
            )
        return self


class DataSettings(Section):
    """Where phones' private data comes from (synthetic by default)."""

    source: str = Field("synthetic", description="'synthetic' or a directory of per-client files")
    num_clients: int = Field(200, ge=1, le=10_000_000)
    examples_per_client: int = Field(40, ge=2, le=1_000_000)
    partition: Literal["natural", "iid", "dirichlet"] = "natural"
    dirichlet_alpha: float = Field(0.5, gt=0, le=1e6)
    heldout_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = Field(0, ge=0)


class SimulationSettings(Section):
    """Simulated populations on Flower's simulation engine."""

    population: str = "mixed"
    ranks: list[int] = Field(default_factory=lambda: [4, 8, 16], min_length=1)
    vectorized: bool = Field(
        True,
        description="train concurrent simulated phones in one batched pass "
        "(simulations/vectorized_service.py); false: every phone trains alone on PEFT",
    )
    vectorized_phones: int = Field(
        8,
        ge=1,
        le=4096,
        description="vectorized mode: phones trained at once (K); each Ray actor gets "
        "cpus / K CPUs so that K phones' calls can wait on the service together",
    )
    vectorized_workers: int = Field(
        0,
        ge=0,
        le=1024,
        description="vectorized mode: worker processes that train the service's batches, each "
        "single-threaded when there are several (0: one per CPU of this machine)",
    )
    ray_address: str | None = None
    num_cpus_per_client: float = Field(
        1.0, gt=0, le=1024, description="CPUs per Ray actor when not vectorized"
    )
    output_dir: str = "runs"


class FedloraSettings(Section):
    """A whole run."""

    model: ModelSettings = Field(default_factory=ModelSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    client: ClientSettings = Field(default_factory=ClientSettings)
    privacy: PrivacySettings = Field(default_factory=PrivacySettings)
    aggregation: AggregationSettings = Field(default_factory=AggregationSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    simulation: SimulationSettings = Field(default_factory=SimulationSettings)

    @model_validator(mode="after")
    def _ranks_fit(self) -> FedloraSettings:
        bad = [r for r in self.simulation.ranks if r < 1 or r > 1024]
        if bad:
            raise ValueError(f"simulation.ranks must be in [1, 1024], got {bad}")
        return self


# ---------------------------------------------------------------------------- errors
def _field_info(loc: tuple[Any, ...]) -> Any:
    model: Any = FedloraSettings
    info = None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not isinstance(part, str) or fields is None or part not in fields:
            return info
        info = fields[part]
        model = info.annotation
    return info


def _allowed(info: Any) -> str | None:
    if info is None:
        return None
    bounds: list[str] = []
    for m in info.metadata:
        if isinstance(m, at.Ge):
            bounds.append(f">= {m.ge}")
        elif isinstance(m, at.Gt):
            bounds.append(f"> {m.gt}")
        elif isinstance(m, at.Le):
            bounds.append(f"<= {m.le}")
        elif isinstance(m, at.Lt):
            bounds.append(f"< {m.lt}")
    if bounds:
        return "allowed range: " + " and ".join(bounds)
    args = getattr(info.annotation, "__args__", None)
    if getattr(info.annotation, "__origin__", None) is Literal and args:
        return "allowed values: " + ", ".join(repr(a) for a in args)
    return None


def _problems(exc: ValidationError, prefix: str = "") -> list[str]:
    out: list[str] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "<root>"
        if prefix:
            key = f"{prefix}.{key}" if key != "<root>" else prefix
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see fedlora.toml for all keys)"
        parts = [f"{key}: {msg}"]
        allowed = _allowed(_field_info(loc))
        if allowed:
            parts.append(allowed)
        if (
            err["type"] != "extra_forbidden"
            and "input" in err
            and not isinstance(err["input"], dict)
        ):
            parts.append(f"got {err['input']!r}")
        out.append("; ".join(parts))
    return out


# ---------------------------------------------------------------------------- loading
def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b=value`` → (["a", "b"], value) with ``value`` parsed as a TOML literal."""
    if "=" not in item:
        raise ConfigError([f"{item}: override must look like section.key=value"])
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError([f"{item}: override key must be dotted, like privacy.clip_norm"])
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.split("."), value


def _merge(base: dict[str, Any], path: list[str], value: Any) -> None:
    node = base
    for part in path[:-1]:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError([f"{'.'.join(path)}: {part} is a value, not a section"])
        node = nxt
    node[path[-1]] = value


def settings_from_dict(data: Mapping[str, Any], overrides: Iterable[str] = ()) -> FedloraSettings:
    merged: dict[str, Any] = _deepcopy(data)
    for item in overrides:
        path, value = parse_override(item)
        _merge(merged, path, value)
    try:
        return FedloraSettings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_problems(exc)) from None


def load_settings(path: str | Path | None = None, overrides: Iterable[str] = ()) -> FedloraSettings:
    """Settings from a TOML file (or defaults when ``path`` is None) plus overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError([f"{p}: configuration file not found"])
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"{p}: not valid TOML: {exc}"]) from None
    return settings_from_dict(data, overrides)


def settings_to_toml(settings: FedloraSettings) -> str:
    return tomli_w.dumps(settings.model_dump(exclude_none=True))


def _deepcopy(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deepcopy(v) if isinstance(v, Mapping) else v for k, v in data.items()}


def settings_from_run_config(run_config: Mapping[str, Any]) -> FedloraSettings:
    """Settings of a Flower deployment: run config ``fedlora-config`` (a TOML path) plus
    ``fedlora-set`` (``;``-separated ``section.key=value`` overrides)."""
    path = run_config.get("fedlora-config")
    overrides = [s for s in str(run_config.get("fedlora-set", "")).split(";") if s.strip()]
    return load_settings(str(path) if path else None, overrides)
