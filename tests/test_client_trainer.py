"""The local trainer: accumulation, checkpointing, cooling, deadline, resume after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_client_support import PRIVATE_TEXTS, community_adapter, phone_model_dir  # noqa: E402

from fedlora.client.model_loading import load_base  # noqa: E402
from fedlora.client.peft_bridge import attach_adapter, extract_adapter  # noqa: E402
from fedlora.client.text_batches import tokenize_texts  # noqa: E402
from fedlora.client.train_state import load_state  # noqa: E402
from fedlora.client.trainer import TrainConfig, steps_for_epochs, train_lora  # noqa: E402

TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def phone_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return phone_model_dir(tiny_model_dir, tmp_path_factory.mktemp("phone-trainer"))


def fresh_model(phone_dir: Path, dropout: float = 0.0) -> Any:
    base = load_base(str(phone_dir), "none", device="cpu")
    adapter = community_adapter(phone_dir, 4, b_scale=0.02)
    model = attach_adapter(base.model, adapter, base.spec, dropout=dropout)
    data = tokenize_texts(base.tokenizer, PRIVATE_TEXTS, 48)
    return model, data, adapter, base


def lora_of(model: Any) -> dict[str, np.ndarray]:
    return {n: p.detach().numpy().copy() for n, p in model.named_parameters() if p.requires_grad}


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=atol, err_msg=k)


def test_accumulation_and_checkpointing_do_not_change_the_result(phone_dir: Path) -> None:
    results = {}
    for label, micro, ckpt in (("full", None, False), ("accum", 1, False), ("ckpt", 2, True)):
        model, data, _, _ = fresh_model(phone_dir)
        cfg = TrainConfig(
            steps=3, batch_size=4, micro_batch_size=micro, gradient_checkpointing=ckpt, seed=1
        )
        res = train_lora(model, data, cfg)
        results[label] = (lora_of(model), res.losses)
        assert not getattr(model.get_base_model(), "is_activation_checkpointing", False)
    assert_same(results["full"][0], results["accum"][0], atol=1e-5)
    assert_same(results["full"][0], results["ckpt"][0], atol=1e-5)
    np.testing.assert_allclose(results["full"][1], results["accum"][1], rtol=1e-5)


def test_training_reduces_loss(phone_dir: Path) -> None:
    model, data, _, _ = fresh_model(phone_dir)
    res = train_lora(model, data, TrainConfig(steps=12, batch_size=4, learning_rate=3e-2))
    assert res.status == "completed" and res.steps == 12 and res.examples_seen == 48
    assert res.last_loss < res.first_loss - 0.1


def test_cooling_pauses_every_n_steps(phone_dir: Path) -> None:
    model, data, _, _ = fresh_model(phone_dir)
    pauses: list[float] = []
    cfg = TrainConfig(steps=7, batch_size=2, cooling_every=3, cooling_seconds=2.5)
    train_lora(model, data, cfg, sleep=pauses.append)
    assert pauses == [2.5, 2.5]  # after steps 3 and 6, not after the last step


def test_deadline_stops_early_and_counts_the_steps_done(phone_dir: Path) -> None:
    model, data, _, _ = fresh_model(phone_dir)
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0  # every clock read is one simulated second
        return now[0]

    cfg = TrainConfig(steps=20, batch_size=2, deadline_s=9.0)
    res = train_lora(model, data, cfg, clock=clock)
    assert res.status == "deadline"
    assert 0 < res.steps < 20 and len(res.losses) == res.steps


def test_epochs_to_steps() -> None:
    assert steps_for_epochs(12, 4, 1.0) == 3
    assert steps_for_epochs(12, 4, 2.5) == 8
    assert steps_for_epochs(3, 8, 1.0) == 1


def test_resume_in_process_matches_uninterrupted(phone_dir: Path, tmp_path: Path) -> None:
    state = tmp_path / "state.pt"
    torch.manual_seed(0)
    model, data, _, _ = fresh_model(phone_dir, dropout=0.2)
    torch.manual_seed(123)
    train_lora(model, data, TrainConfig(steps=6, batch_size=4, seed=2))
    reference = lora_of(model)

    model, data, _, _ = fresh_model(phone_dir, dropout=0.2)
    torch.manual_seed(123)
    cfg = TrainConfig(
        steps=6, batch_size=4, seed=2, checkpoint_every=2, checkpoint_path=state, run_key="k"
    )

    class Stop(Exception):
        pass

    def stop_after_3(step: int, loss: float) -> None:
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        train_lora(model, data, cfg, on_step=stop_after_3)
    saved = load_state(state, "k")
    assert saved is not None and saved.step == 2
    assert load_state(state, "another-round") is None
    torch.manual_seed(999)  # the resumed run must not depend on the RNG it finds
    model, data, _, _ = fresh_model(phone_dir, dropout=0.2)
    res = train_lora(model, data, cfg)
    assert res.resumed_from == 2 and res.steps == 6
    assert_same(reference, lora_of(model))


KILL_SCRIPT = textwrap.dedent(
    """
    import sys, json
    from pathlib import Path
    sys.path.insert(0, {tests!r})
    import numpy as np, torch
    from fedlora.client.model_loading import load_base
    from fedlora.client.peft_bridge import attach_adapter, extract_adapter
    from fedlora.client.text_batches import tokenize_texts
    from fedlora.client.trainer import TrainConfig, train_lora
    from test_client_support import PRIVATE_TEXTS, community_adapter

    phone, state, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    torch.manual_seed(123)
    base = load_base(str(phone), "none", device="cpu")
    adapter = community_adapter(phone, 4, b_scale=0.02)
    model = attach_adapter(base.model, adapter, base.spec, dropout=0.2)
    data = tokenize_texts(base.tokenizer, PRIVATE_TEXTS, 48)
    cfg = TrainConfig(steps=8, batch_size=4, seed=2, checkpoint_every=2, checkpoint_path=state,
                      run_key="round-1", cooling_every=1, cooling_seconds=float(sys.argv[4]))
    res = train_lora(model, data, cfg, on_step=lambda s, l: print("step", s, flush=True))
    trained = extract_adapter(model, base_fingerprint=base.fingerprint)
    np.savez(out, **{{k: v for k, v in trained.tensors().items()}})
    print("done resumed_from", res.resumed_from, flush=True)
    """
)


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted_run(phone_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "phone_train.py"
    script.write_text(KILL_SCRIPT.format(tests=str(TESTS_DIR)))
    state, out = tmp_path / "phone" / "train_state.pt", tmp_path / "trained.npz"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, str(script), str(phone_dir), str(state), str(out)]
    proc = subprocess.Popen(
        [*argv, "0.4"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 240
    for line in proc.stdout:
        if line.strip() == "step 3":  # step 2 is on disk, step 3 is not
            proc.send_signal(signal.SIGKILL)
            break
        assert time.monotonic() < deadline
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    saved = load_state(state, "round-1")
    assert saved is not None and saved.step == 2

    resumed = subprocess.run(
        [*argv, "0"], capture_output=True, text=True, env=env, timeout=240, check=True
    )
    assert "done resumed_from 2" in resumed.stdout
    assert "step 3" in resumed.stdout and "step 1\n" not in resumed.stdout
    got = dict(np.load(out))

    # the uninterrupted run, in this process with the subprocess's thread count
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(123)
        model, data, _, base = fresh_model(phone_dir, dropout=0.2)
        cfg = TrainConfig(steps=8, batch_size=4, seed=2)
        train_lora(model, data, cfg)
        want = extract_adapter(model, base_fingerprint=base.fingerprint).tensors()
    finally:
        torch.set_num_threads(threads)
    assert_same(want, got)
    # and training did move the adapter away from where it started
    start = community_adapter(phone_dir, 4, b_scale=0.02).tensors()
    assert any(not np.allclose(start[k], got[k]) for k in start)


def test_extract_after_training_is_lora_only(phone_dir: Path) -> None:
    model, data, _, base = fresh_model(phone_dir)
    train_lora(model, data, TrainConfig(steps=1, batch_size=2))
    adapter = extract_adapter(model, base_fingerprint=base.fingerprint)
    for name, arr in adapter.tensors().items():
        assert name.endswith((".lora_A.weight", ".lora_B.weight"))
        assert 4 in arr.shape
