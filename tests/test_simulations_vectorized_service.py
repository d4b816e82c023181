"""The vectorized-phones service: its batcher (no Ray), and phones' rounds through it equal to
plain PEFT rounds (the session wiring: FFA, ranks, losses, fallback)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from test_client_support import (  # noqa: E402
    PRIVATE_TEXTS,
    community_adapter,
    instructions,
    phone_model_dir,
)

from fedlora.adapter import LoraAdapter  # noqa: E402
from fedlora.client.memory_plan import TrainPlan  # noqa: E402
from fedlora.client.model_loading import load_base  # noqa: E402
from fedlora.client.session import PhoneOptions, PhoneSession, RoundOutcome  # noqa: E402
from fedlora.config import FedloraSettings  # noqa: E402
from fedlora.ranks import truncate_to_rank  # noqa: E402
from fedlora.simulations.vectorized_core import ServiceCore, portable_facts  # noqa: E402
from fedlora.simulations.vectorized_jobs import (  # noqa: E402
    VectorizedJob,
    VectorizedLocalTrainer,
    VectorizedOutcome,
)
from fedlora.simulations.vectorized_queue import Batcher, threaded_runner  # noqa: E402


# ---------------------------------------------------------------------------- batcher
class Recorder:
    """A runner that records its batches (optionally slow, optionally failing)."""

    def __init__(self, fail: bool = False, seconds: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.fail = fail
        self.seconds = seconds

    async def __call__(self, jobs: list[int]) -> list[int]:
        self.batches.append(list(jobs))
        await asyncio.sleep(self.seconds)
        if self.fail:
            raise ValueError("boom")
        return [10 * j for j in jobs]


async def _submit_all(batcher: Batcher[int, int], jobs: list[int], gap: float = 0.0) -> list[int]:
    tasks = []
    for j in jobs:
        tasks.append(asyncio.ensure_future(batcher.submit(j)))
        await asyncio.sleep(gap)
    return list(await asyncio.gather(*tasks))


def test_batcher_runs_one_batch_once_its_target_waits() -> None:
    rec = Recorder()
    batcher: Batcher[int, int] = Batcher([rec], batch_target=4, linger_s=30.0)
    t0 = time.perf_counter()
    got = asyncio.run(_submit_all(batcher, [1, 2, 3, 4]))
    assert time.perf_counter() - t0 < 5.0  # did not linger
    assert got == [10, 20, 30, 40]
    assert rec.batches == [[1, 2, 3, 4]]
    assert batcher.stats.sizes == [4]


def test_batcher_lingers_after_the_last_arrival_then_runs_what_came() -> None:
    rec = Recorder()
    batcher: Batcher[int, int] = Batcher([rec], batch_target=8, linger_s=0.3)
    t0 = time.perf_counter()
    got = asyncio.run(_submit_all(batcher, [1, 2, 3], gap=0.1))
    elapsed = time.perf_counter() - t0
    assert got == [10, 20, 30]
    assert rec.batches == [[1, 2, 3]]  # arrivals 0.1 s apart < linger: one batch
    assert elapsed >= 0.3 + 0.2 - 0.05


def test_batcher_does_not_linger_once_every_phone_in_flight_has_arrived() -> None:
    """expected = 3 callers can wait at once: when all 3 are there nobody else can come."""
    rec = Recorder()
    batcher: Batcher[int, int] = Batcher([rec], batch_target=8, linger_s=30.0, expected=3)
    t0 = time.perf_counter()
    assert asyncio.run(_submit_all(batcher, [1, 2, 3])) == [10, 20, 30]
    assert time.perf_counter() - t0 < 5.0
    assert rec.batches == [[1, 2, 3]]


def test_batcher_splits_one_queue_evenly_over_free_runners() -> None:
    """Two runners, K = 8: two batches of 4, running at the same time (one queue, not one
    per runner: the split does not depend on which phones came)."""
    a, b = Recorder(seconds=0.3), Recorder(seconds=0.3)
    batcher: Batcher[int, int] = Batcher([a, b], batch_target=4, linger_s=30.0, expected=8)
    t0 = time.perf_counter()
    got = asyncio.run(_submit_all(batcher, list(range(8))))
    assert got == [10 * j for j in range(8)]
    assert time.perf_counter() - t0 < 0.55  # the two batches overlapped
    assert sorted(map(sorted, a.batches + b.batches)) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    # a short wave (5 of 8 came, then nothing): target 4 goes at once, the rest after linger
    c = Recorder()
    short: Batcher[int, int] = Batcher([c], batch_target=4, linger_s=0.2, expected=8)
    assert asyncio.run(_submit_all(short, [1, 2, 3, 4, 5])) == [10, 20, 30, 40, 50]
    assert c.batches == [[1, 2, 3, 4], [5]]


def test_batcher_shares_what_waits_over_free_runners_when_all_arrived() -> None:
    a, b = Recorder(), Recorder()
    batcher: Batcher[int, int] = Batcher([a, b], batch_target=4, linger_s=30.0, expected=3)
    assert asyncio.run(_submit_all(batcher, [1, 2, 3])) == [10, 20, 30]
    assert sorted(len(x) for x in a.batches + b.batches) == [1, 2]


def test_batcher_collects_the_next_batch_while_one_runs() -> None:
    slow = Recorder(seconds=0.3)
    batcher: Batcher[int, int] = Batcher([slow], batch_target=2, linger_s=0.05)

    async def go() -> list[int]:
        first = [asyncio.ensure_future(batcher.submit(j)) for j in (1, 2)]
        await asyncio.sleep(0.1)  # batch [1, 2] is running
        second = [asyncio.ensure_future(batcher.submit(j)) for j in (3, 4, 5)]
        return list(await asyncio.gather(*first, *second))

    assert asyncio.run(go()) == [10, 20, 30, 40, 50]
    assert batcher.stats.sizes == [2, 2, 1]  # the runner was busy: batches of the target


def test_batcher_gives_every_caller_the_batch_error_and_keeps_working() -> None:
    rec = Recorder(fail=True)
    batcher: Batcher[int, int] = Batcher([rec], batch_target=2, linger_s=0.05)

    async def go() -> list[object]:
        return list(
            await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
        )

    got = asyncio.run(go())
    assert all(isinstance(g, ValueError) for g in got)
    rec.fail = False
    assert asyncio.run(_submit_all(batcher, [5, 6])) == [50, 60]


def test_a_threaded_runner_runs_a_blocking_function() -> None:
    with ThreadPoolExecutor(1) as pool:
        runner = threaded_runner(lambda jobs: [j + 1 for j in jobs], pool)
        batcher: Batcher[int, int] = Batcher([runner], batch_target=2, linger_s=0.05)
        assert asyncio.run(_submit_all(batcher, [1, 2])) == [2, 3]


def test_batcher_refuses_bad_settings() -> None:
    with pytest.raises(ValueError):
        Batcher([Recorder()], batch_target=0, linger_s=0.1)
    with pytest.raises(ValueError):
        Batcher([Recorder()], batch_target=1, linger_s=-1)
    with pytest.raises(ValueError):
        Batcher([], batch_target=1, linger_s=0.1)
    with pytest.raises(ValueError):
        Batcher([Recorder()], batch_target=1, linger_s=0.1, expected=0)


# ---------------------------------------------------------------------------- sessions
@pytest.fixture(scope="module")
def phone_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return phone_model_dir(tiny_model_dir, tmp_path_factory.mktemp("vectorized-service"))


@pytest.fixture(scope="module")
def settings(phone_dir: Path) -> FedloraSettings:
    return FedloraSettings.model_validate({"model": {"base": str(phone_dir), "max_seq_len": 64}})


@pytest.fixture(scope="module")
def community(phone_dir: Path) -> LoraAdapter:
    return community_adapter(phone_dir, 8, b_scale=0.01)


class InProcessService:
    """The Ray actor's work in-process: a batcher on its own event-loop thread."""

    def __init__(self, settings: FedloraSettings, k_target: int) -> None:
        base = load_base(settings.model.base, "none")  # its own copy, as the actor has
        self.core = ServiceCore(base.model, base.spec, threads=1)
        self.facts = portable_facts(base)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.pool = ThreadPoolExecutor(1)
        self.batcher: Batcher[VectorizedJob, VectorizedOutcome] = Batcher(
            [threaded_runner(self.core.run_batch, self.pool)], batch_target=k_target, linger_s=2.0
        )

    def submit(self, job: VectorizedJob) -> VectorizedOutcome:
        return asyncio.run_coroutine_threadsafe(self.batcher.submit(job), self.loop).result(120)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.pool.shutdown()


@pytest.fixture
def service(settings: FedloraSettings) -> Iterator[InProcessService]:
    svc = InProcessService(settings, k_target=4)
    yield svc
    svc.close()


PHONES = [  # (rank, rule, seed)
    (8, "ffa", 1),
    (4, "ffa", 2),
    (2, "rank_fedavg", 3),
    (4, "fedsa", 4),
]


def _round(
    session: PhoneSession,
    settings: FedloraSettings,
    community: LoraAdapter,
    phone: tuple[int, str, int],
    options: PhoneOptions | None,
) -> RoundOutcome:
    rank, rule, seed = phone
    view = truncate_to_rank(community, rank)
    texts = PRIVATE_TEXTS[seed % 3 :]
    instr = instructions(rank, rule=rule, seed=seed, local_steps=4, learning_rate=2e-2)
    return session.run_round(
        instr, view, texts, settings, heldout_texts=PRIVATE_TEXTS[:4], options=options
    )


def test_phones_through_the_service_equal_plain_peft_rounds(
    settings: FedloraSettings, community: LoraAdapter, service: InProcessService
) -> None:
    session = PhoneSession()
    vec = PhoneOptions(trainer=VectorizedLocalTrainer(service.submit))
    with ThreadPoolExecutor(len(PHONES)) as pool:  # concurrent rounds meet in one batch
        futures = [pool.submit(_round, session, settings, community, p, vec) for p in PHONES]
        got = [f.result() for f in futures]
    assert service.batcher.stats.sizes == [len(PHONES)]
    for phone, out in zip(PHONES, got, strict=True):
        ref = _round(session, settings, community, phone, None)
        assert out.metrics["trainer"] == "vectorized" and ref.metrics["trainer"] == "peft"
        assert out.metrics["vectorized_batch"] == len(PHONES)
        assert out.report.status == ref.report.status == "trained"
        assert out.report.steps == ref.report.steps == 4
        assert out.report.loss_before == pytest.approx(ref.report.loss_before, abs=1e-5)
        assert out.report.loss_after == pytest.approx(ref.report.loss_after, abs=1e-5)
        assert out.report.loss_after < out.report.loss_before
        assert out.metrics["train_loss_last"] == pytest.approx(
            ref.metrics["train_loss_last"], abs=1e-5
        )
        assert out.metrics["layout_digest"] == ref.metrics["layout_digest"]
        assert out.delta is not None and ref.delta is not None
        assert out.delta.meta.ranks == ref.delta.meta.ranks
        for name, p in ref.delta:
            q = out.delta.pairs[name]
            np.testing.assert_allclose(q.A, p.A, atol=1e-5)
            np.testing.assert_allclose(q.B, p.B, atol=1e-5)
        if phone[1] == "ffa":  # A frozen: only B moves
            assert all(not np.any(p.A) for _, p in out.delta)
        moved = "A" if phone[1] == "fedsa" else "B"  # FedSA keeps B on the phone
        assert max(float(np.abs(getattr(p, moved)).max()) for _, p in out.delta) > 1e-4


PHONE_PROCESS = """
import sys
from multiprocessing.connection import Client

conn = Client(("127.0.0.1", int(sys.argv[1])), authkey=sys.argv[2].encode())
instr, view, texts, heldout, settings = conn.recv()
from fedlora.client.session import PhoneOptions, PhoneSession
from fedlora.simulations.vectorized_jobs import VectorizedLocalTrainer


def ask(kind, payload):
    conn.send((kind, payload))
    return conn.recv()


trainer = VectorizedLocalTrainer(
    lambda job: ask("train", job), describe=lambda model, device: ask("describe", None)
)
out = PhoneSession().run_round(
    instr, view, texts, settings, heldout_texts=heldout, options=PhoneOptions(trainer=trainer)
)
loaded = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
conn.send(("done", (out, loaded)))
"""


def test_a_phone_process_whose_round_the_service_trains_never_loads_torch(
    settings: FedloraSettings, community: LoraAdapter, service: InProcessService
) -> None:
    """The simulated phone's side in a process of its own (as a Flower actor): it tokenizes
    with the service's portable tokenizer, plans, ships the job, builds the delta and the
    report — equal to the plain PEFT round — and never imports torch, transformers or peft."""
    import secrets
    import subprocess
    import sys
    from multiprocessing.connection import Listener

    rank, rule, seed = PHONES[2]
    view = truncate_to_rank(community, rank)
    instr = instructions(rank, rule=rule, seed=seed, local_steps=4, learning_rate=2e-2)
    texts = PRIVATE_TEXTS[seed % 3 :]
    key = secrets.token_hex(16)
    with Listener(("127.0.0.1", 0), authkey=key.encode()) as listener:
        port = listener.address[1]
        child = subprocess.Popen(
            [sys.executable, "-c", PHONE_PROCESS, str(port), key],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            with listener.accept() as conn:
                conn.send((instr, view, texts, PRIVATE_TEXTS[:4], settings))
                while True:
                    kind, payload = conn.recv()
                    if kind == "describe":
                        conn.send(service.facts)
                    elif kind == "train":
                        conn.send(service.submit(payload))
                    else:
                        out, loaded = payload
                        break
        finally:
            _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err[-2000:]
    assert loaded == []
    assert out.metrics["trainer"] == "vectorized" and out.report.status == "trained"
    ref = _round(PhoneSession(), settings, community, PHONES[2], None)
    assert (out.report.backend, out.report.dtype, out.report.quantization) == (
        ref.report.backend,
        ref.report.dtype,
        ref.report.quantization,
    )
    assert out.report.loss_after == pytest.approx(ref.report.loss_after, abs=1e-5)
    assert out.metrics["layout_digest"] == ref.metrics["layout_digest"]
    assert out.delta is not None and ref.delta is not None
    for name, p in ref.delta:
        np.testing.assert_allclose(out.delta.pairs[name].B, p.B, atol=1e-5)
        np.testing.assert_allclose(out.delta.pairs[name].A, p.A, atol=1e-5)


@pytest.mark.parametrize("described", [False, True], ids=["phone-loads-base", "service-base"])
def test_rounds_the_service_cannot_run_fall_back_to_peft(
    settings: FedloraSettings, community: LoraAdapter, service: InProcessService, described: bool
) -> None:
    """Also when the phone prepared the round from the service's facts (no local base yet):
    the fallback loads the phone's own base then."""
    session = PhoneSession()
    PhoneSession.clear_cache()
    describe = (lambda model, device: service.facts) if described else None
    trainer = VectorizedLocalTrainer(service.submit, describe=describe)
    mezo = PhoneOptions(trainer=trainer, force_plan=TrainPlan("mezo", 4, 4, 1, False))
    out = _round(session, settings, community, (4, "ffa", 1), mezo)
    assert out.report.status == "trained"
    assert out.metrics["trainer"] == "peft"
    assert out.metrics["trainer_fallback"] == "mezo plan"
    timed = settings.model_copy(
        update={"client": settings.client.model_copy(update={"round_deadline_s": 600.0})}
    )
    out = _round(session, timed, community, (4, "ffa", 1), PhoneOptions(trainer=trainer))
    assert out.metrics["trainer"] == "peft"
    assert "deadline" in str(out.metrics["trainer_fallback"])
    assert service.batcher.stats.sizes == []


def test_a_failing_service_leaves_the_round_on_peft(
    settings: FedloraSettings, community: LoraAdapter
) -> None:
    def broken(job: VectorizedJob) -> VectorizedOutcome:
        raise ConnectionError("service gone")

    opts = PhoneOptions(trainer=VectorizedLocalTrainer(broken))
    out = _round(PhoneSession(), settings, community, (4, "ffa", 1), opts)
    assert out.report.status == "trained"
    assert out.metrics["trainer"] == "peft"
    assert "service gone" in str(out.metrics["trainer_fallback"])


def test_service_workers_share_k() -> None:
    from fedlora.config import load_settings
    from fedlora.simulations.vectorized_service import ServiceSpec

    s = load_settings(None, [])
    one = ServiceSpec.for_run(s, "svc", 8)
    assert one.workers == 1 and one.batch_target == 8 and one.worker_threads >= 1
    two = ServiceSpec.for_run(s, "svc", 7, workers=2)
    assert two.batch_target == 4 and two.worker_threads == 1  # ⌈7 / 2⌉, one core each
    capped = ServiceSpec.for_run(s, "svc", 2, workers=16)  # never more workers than K
    assert capped.workers == 2 and capped.batch_target == 1


def test_a_memory_budget_is_verified_on_the_phones_own_base_then_the_service_trains(
    settings: FedloraSettings, community: LoraAdapter, service: InProcessService
) -> None:
    budgeted = settings.model_copy(
        update={"client": settings.client.model_copy(update={"memory_budget_mb": 64_000})}
    )
    trainer = VectorizedLocalTrainer(service.submit, describe=lambda model, device: service.facts)
    out = _round(PhoneSession(), budgeted, community, PHONES[1], PhoneOptions(trainer=trainer))
    assert out.report.status == "trained"
    assert out.metrics["trainer"] == "vectorized"
    assert out.metrics["memory_budget_mb"] == 64_000.0
    assert out.metrics["plan"] and out.metrics["backoffs"] == 0
