"""The embedded default base model: offline, deterministic, loads with plain transformers,
and is clearly better than a random init of the same shape on held-out generic text."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from fedlora.base_model import (  # noqa: E402
    BaseBuildConfig,
    build_default_model,
    mean_loss,
    read_build_report,
    resolve_model,
)
from fedlora.data import generic_heldout  # noqa: E402
from fedlora.errors import ModelSourceError  # noqa: E402
from fedlora.fingerprint import fingerprint_model_dir  # noqa: E402

TINY = replace(
    BaseBuildConfig(),
    name="tiny-test",
    vocab_size=300,
    hidden_size=32,
    intermediate_size=64,
    num_layers=1,
    num_heads=2,
    num_kv_heads=2,
    corpus_docs=400,
    heldout_docs=50,
    seq_len=32,
    batch_size=4,
    steps=3,
    warmup_steps=1,
)


def test_build_is_deterministic(tmp_path: Path) -> None:
    a = build_default_model(tmp_path / "a", TINY)
    b = build_default_model(tmp_path / "b", TINY)
    assert a.fingerprint == b.fingerprint
    assert fingerprint_model_dir(tmp_path / "a") == fingerprint_model_dir(tmp_path / "b")
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()
    c = build_default_model(tmp_path / "c", replace(TINY, seed=TINY.seed + 1))
    assert c.fingerprint != a.fingerprint
    # no temporary build directory is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def test_resolve_model_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match=r"no config\.json"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(ModelSourceError, match="could not fetch"):
        resolve_model("some-org/some-model-that-is-not-here")


@pytest.mark.slow
def test_default_model_loads_with_plain_transformers_and_beats_random_init(
    default_model_dir: Path,
) -> None:
    model = AutoModelForCausalLM.from_pretrained(default_model_dir)
    tok = AutoTokenizer.from_pretrained(default_model_dir)
    assert model.config.model_type == "llama"
    texts = list(generic_heldout(seed=7, n_docs=64))
    ids: list[int] = []
    for enc in tok(texts, add_special_tokens=False)["input_ids"]:
        ids.extend([tok.bos_token_id, *enc, tok.eos_token_id])
    rows = torch.tensor(ids[: (len(ids) // 64) * 64]).reshape(-1, 64)
    built = mean_loss(model, rows)
    torch.manual_seed(0)
    random_init = mean_loss(AutoModelForCausalLM.from_config(model.config), rows)
    print(f"held-out generic loss: built {built:.3f} vs random init {random_init:.3f}")
    assert built < 0.5 * random_init
    report = read_build_report(default_model_dir)
    assert report is not None and report.heldout_loss < report.random_init_loss - 3.0
    assert report.fingerprint == fingerprint_model_dir(default_model_dir).id
