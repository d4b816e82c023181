"""Configuration: TOML loading, overrides and error messages that name key and range."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedlora.config import FedloraSettings, load_settings, settings_from_dict, settings_to_toml
from fedlora.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_example_file_is_valid_and_equals_defaults() -> None:
    assert load_settings(ROOT / "fedlora.toml") == FedloraSettings()


def test_toml_round_trip(tmp_path: Path) -> None:
    s = settings_from_dict({"lora": {"rank": 4}, "privacy": {"noise": "local"}})
    f = tmp_path / "c.toml"
    f.write_text(settings_to_toml(s))
    assert load_settings(f) == s


def test_overrides_parse_toml_literals() -> None:
    s = load_settings(
        None,
        [
            "lora.rank=4",
            "privacy.clip_norm=0.25",
            'lora.target_modules=["q_proj", "v_proj"]',
            "privacy.noise=local",
            "client.gradient_checkpointing=true",
        ],
    )
    assert s.lora.rank == 4
    assert s.privacy.clip_norm == 0.25
    assert s.lora.target_modules == ["q_proj", "v_proj"]
    assert s.privacy.noise == "local"
    assert s.client.gradient_checkpointing is True


def test_out_of_range_names_key_and_range() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, ["lora.rank=0"])
    msg = str(err.value)
    assert "lora.rank" in msg and ">= 1" in msg and "<= 1024" in msg and "got 0" in msg


def test_bad_choice_lists_allowed_values() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, ["aggregation.rule=median"])
    msg = str(err.value)
    assert "aggregation.rule" in msg and "'flexlora'" in msg and "median" in msg


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"privacy\.clipnorm: unknown key"):
        load_settings(None, ["privacy.clipnorm=1"])


def test_several_problems_reported_together(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[privacy]\nclip_norm = -1\ndelta = 2\n")
    with pytest.raises(ConfigError) as err:
        load_settings(f)
    assert {p.split(":")[0] for p in err.value.problems} == {"privacy.clip_norm", "privacy.delta"}


def test_cross_field_rules() -> None:
    with pytest.raises(ConfigError, match=r"micro_batch_size \(3\) must divide batch_size \(8\)"):
        load_settings(None, ["client.micro_batch_size=3"])
    with pytest.raises(ConfigError, match=r"min_clients \(20\) must be <= clients_per_round"):
        load_settings(None, ["server.min_clients=20"])


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")
    f = tmp_path / "broken.toml"
    f.write_text("[lora\nrank=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(f)
    with pytest.raises(ConfigError, match="must look like"):
        load_settings(None, ["lora.rank"])
