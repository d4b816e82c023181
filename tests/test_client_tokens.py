"""The torch-free token path: a PortableTokenizer gives the ids of the tokenizer it came from,
travels by pickle, and the round's planning modules import neither torch nor transformers."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from fedlora.client.tokens import PortableTokenizer, tokenize_texts
from fedlora.data.federated import build_synthetic_federation

pytest.importorskip("transformers")

from test_client_support import PRIVATE_TEXTS, phone_model_dir


def _texts() -> list[str]:
    fed = build_synthetic_federation(num_clients=6, examples_per_client=20, seed=3)
    texts = [t for c in fed.clients.values() for t in c.train]
    return texts + list(PRIVATE_TEXTS) + ["", "  spaces  ", "ünïcødé ✓ 🙂", "a\nb\tc"]


def _hf_tokenizer(directory: Path) -> object:
    from fedlora.client.model_loading import load_tokenizer

    return load_tokenizer(directory)


@pytest.fixture(scope="module")
def char_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return phone_model_dir(tiny_model_dir, tmp_path_factory.mktemp("tokens"))


def test_portable_tokenizer_equals_the_default_models_tokenizer(default_model_dir: Path) -> None:
    hf = _hf_tokenizer(default_model_dir)
    portable = PortableTokenizer.of(hf)
    assert portable is not None
    portable = pickle.loads(pickle.dumps(portable))  # as it travels to a phone's process
    texts = _texts()
    assert tokenize_texts(portable, texts, 64) == tokenize_texts(hf, texts, 64)
    assert tokenize_texts(portable, texts, 7) == tokenize_texts(hf, texts, 7)  # truncation
    ids = tokenize_texts(portable, texts, 64).ids
    assert max(len(r) for r in ids) > 7 and all(len(r) >= 2 for r in ids)  # <s> … </s>


def test_portable_tokenizer_equals_a_character_tokenizer(char_dir: Path) -> None:
    hf = _hf_tokenizer(char_dir)
    portable = PortableTokenizer.of(hf)
    assert portable is not None
    assert (portable.bos_token_id, portable.eos_token_id, portable.pad_token_id) == (
        hf.bos_token_id,  # type: ignore[attr-defined]
        hf.eos_token_id,  # type: ignore[attr-defined]
        hf.pad_token_id,  # type: ignore[attr-defined]
    )
    texts = _texts()
    assert tokenize_texts(portable, texts, 48) == tokenize_texts(hf, texts, 48)


def test_a_slow_tokenizer_has_no_portable_form() -> None:
    class Slow:  # a Python tokenizer: no Rust core to serialise
        bos_token_id = eos_token_id = pad_token_id = 0

    assert PortableTokenizer.of(Slow()) is None


def test_the_round_planning_code_imports_neither_torch_nor_transformers() -> None:
    code = (
        "import sys\n"
        "import fedlora.client.session, fedlora.client.round_training, fedlora.client.tokens\n"
        "import fedlora.simulations.vectorized_jobs, fedlora.simulations.vectorized_service\n"
        "import fedlora.simulations.behaviour, fedlora.client.app\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
