"""The federated round loop, on Flower's Message API (a ``Grid``).

One round, server side:

1. wait until enough phones are connected (Flower's own FedAvg samples whatever is there in
   round 1 and under-samples; we wait, with a deadline), then sample ``clients_per_round``;
2. fix the round's privacy context (clip norm — adaptive or fixed —, noise, modulus) and
   refuse the round *before it starts* if it would exceed the ε budget;
3. send each phone the community view at its rank + instructions + privacy context;
4. collect replies until the round deadline; missing or failed phones are dropouts;
5. sum the survivors' privatized vectors — through SecAgg+ when enabled, so only the sum is
   ever seen — and undo scaling/quantization with the pipeline's server half;
6. aggregate with the configured rule, apply the server optimizer, make per-rank views;
   a rule that needs each phone's factors (FLoRA) skips the sum instead: every phone's own
   delta is validated, then accumulated one by one (secure aggregation off, noise ``none``
   or ``local`` only — refused when the loop is built, :meth:`RoundLoop._aggregate_each`);
7. commit: registry publication (blobs + signature + metrics + ledger) in one transaction.

A round that cannot complete (too few survivors, a secure-aggregation abort, a bad sum)
is recorded as failed with its reason and the published adapter stays what it was. A
restarted server resumes from the last committed round (:meth:`Registry.recover_run`).

The loop imports no torch: the base model is known only through its files (fingerprint and
linear shapes from the safetensors headers).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedlora.adapter import LoraAdapter
from fedlora.aggregation import (
    Aggregate,
    AggregationSpec,
    Contribution,
    RankedSum,
    finish_round,
    make_aggregator,
    make_server_optimizer,
    make_sum_aggregator,
    needs_each_phone,
    per_phone_privacy_problems,
)
from fedlora.aggregation.ffa import initial_adapter
from fedlora.aggregation.linear import LinearAggregator
from fedlora.config import FedloraSettings
from fedlora.errors import ConfigError, FedloraError
from fedlora.fingerprint import fingerprint_model_dir
from fedlora.model_files import linear_shapes_from_dir
from fedlora.privacy.dp import AdaptiveClipController, RoundContext, make_controller, make_ledger
from fedlora.privacy.dp import round_context as make_round_context
from fedlora.privacy.dp.accounting import PrivacyLedger, RoundPrivacy
from fedlora.privacy.round_pipeline import pipeline_for_round
from fedlora.privacy.secagg import ContributionLayout, SecAggError
from fedlora.privacy.secagg.flower import SecAggConfig, run_secagg
from fedlora.protocol import (
    COMMUNITY,
    PRIVACY,
    REPORT,
    ROUND,
    VECTOR,
    PhoneReport,
    RoundInstructions,
)
from fedlora.records import put_adapter
from fedlora.server.registry import Registry
from fedlora.server.registry_types import PrivacySnapshot, RoundMetrics, RoundPublication

log = logging.getLogger(__name__)

CAPABILITIES = "fedlora.capabilities"


class RoundAborted(FedloraError):
    """A round could not complete; the community adapter stays unchanged."""


@dataclass
class RoundSummary:
    """What a round did, for logs, progress displays and reports."""

    round: int
    status: str
    reason: str = ""
    sampled: int = 0
    contributors: int = 0
    dropouts: int = 0
    not_allowed: int = 0
    rank_mix: dict[int, int] = field(default_factory=dict)
    epsilon: float | None = None
    community_loss: float | None = None
    local_loss_after: float | None = None
    bytes_up: int = 0
    bytes_down: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    version_hash: str = ""


@dataclass(frozen=True)
class BaseInfo:
    """The base model as the server knows it: fingerprint and LoRA-targeted linear shapes."""

    directory: str
    fingerprint: str
    linear_shapes: dict[str, tuple[int, int]]

    @classmethod
    def from_dir(cls, directory: str | Path, target_modules: Iterable[str]) -> BaseInfo:
        return cls(
            directory=str(directory),
            fingerprint=fingerprint_model_dir(directory).id,
            linear_shapes=linear_shapes_from_dir(directory, target_modules),
        )


ProgressFn = Callable[[RoundSummary], None]


class RoundLoop:
    """Runs rounds against a Grid, committing each through the registry."""

    def __init__(
        self,
        settings: FedloraSettings,
        registry: Registry,
        base: BaseInfo,
        *,
        run_name: str | None = None,
        population_size: int | None = None,
        progress: ProgressFn | None = None,
        node_wait_s: float = 60.0,
    ) -> None:
        problems = per_phone_privacy_problems(
            settings.aggregation,
            secure_aggregation=settings.privacy.secure_aggregation,
            noise=settings.privacy.noise,
        )
        if problems:  # before any run is begun or round started
            raise ConfigError(problems)
        self.per_phone = needs_each_phone(settings.aggregation)
        self.s = settings
        self.registry = registry
        self.base = base
        self.progress = progress
        self.node_wait_s = node_wait_s
        self.population_size = population_size
        self.ranks = tuple(sorted(set(settings.simulation.ranks)))
        self.r_max = self.ranks[-1]
        scaling = settings.lora.alpha / settings.lora.rank
        self.spec = AggregationSpec(
            base_fingerprint=base.fingerprint,
            linear_shapes=base.linear_shapes,
            scalings={m: scaling for m in base.linear_shapes},
            ranks=self.ranks,
            dtype="float32",
        )
        self.run_info = registry.begin_run(run_name, config=settings.model_dump(mode="json"))
        self.controller: AdaptiveClipController | None = make_controller(settings.privacy)
        self.ledger: PrivacyLedger = make_ledger(settings.privacy)
        self.optimizer = make_server_optimizer(settings.aggregation)
        self.opt_state = None
        self.node_ranks: dict[int, int] = {}
        self.summaries: list[RoundSummary] = []
        self.community, self.start_round = self._resume_or_init()
        self.views = self._views(self.community)

    # ------------------------------------------------------------------ state
    def _resume_or_init(self) -> tuple[LoraAdapter, int]:
        committed = self.registry.recover_run(self.run_info.id)
        if committed is None:
            adapter = initial_adapter(self.spec, seed=self.s.data.seed).with_meta(
                producer="fedlora-server", version=0, round=0
            )
            return adapter, 1
        community = self.registry.load_adapter(committed.community.id)
        if committed.ledger_json:
            self.ledger = PrivacyLedger.from_json(committed.ledger_json)
        number = committed.round.number
        log.info("resuming run %s after committed round %s", self.run_info.name, number)
        return community, number + 1

    def _views(self, community: LoraAdapter) -> dict[int, LoraAdapter]:
        from fedlora.aggregation import redistribute

        nested = self.s.aggregation.rule in ("rank_fedavg", "hetlora", "ffa", "fedsa")
        return {r: v.adapter for r, v in redistribute(community, self.ranks, nested=nested).items()}

    # ------------------------------------------------------------------ nodes
    def _wait_for_nodes(self, grid: Grid, want: int) -> list[int]:
        deadline = time.monotonic() + self.node_wait_s
        nodes = sorted(grid.get_node_ids())
        while len(nodes) < want and time.monotonic() < deadline:
            time.sleep(0.5)
            nodes = sorted(grid.get_node_ids())
        return nodes

    def _learn_ranks(self, grid: Grid, nodes: Sequence[int], rnd: int) -> None:
        unknown = [n for n in nodes if n not in self.node_ranks]
        if not unknown:
            return
        msgs = [
            Message(
                RecordDict({CAPABILITIES: ConfigRecord({"want": "max_rank"})}),
                n,
                "query",
                group_id=str(rnd),
            )
            for n in unknown
        ]
        for reply in grid.send_and_receive(msgs, timeout=self.s.server.round_timeout_s):
            if reply.has_error():
                continue
            rec = reply.content.config_records.get(CAPABILITIES)
            if rec is None or "max_rank" not in rec:
                continue
            max_rank = int(rec["max_rank"])
            fitting = [r for r in self.ranks if r <= max_rank]
            self.node_ranks[reply.metadata.src_node_id] = fitting[-1] if fitting else self.ranks[0]

    # ------------------------------------------------------------------ one round
    def run(self, grid: Grid) -> list[RoundSummary]:
        for rnd in range(self.start_round, self.s.server.rounds + 1):
            summary = self.run_round(grid, rnd)
            self.summaries.append(summary)
            if self.progress is not None:
                self.progress(summary)
            if summary.status == "budget_exhausted":
                break
        self.registry.finish_run(self.run_info.id)
        return self.summaries

    def run_round(self, grid: Grid, rnd: int) -> RoundSummary:
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        per_round = self.s.server.clients_per_round
        nodes = self._wait_for_nodes(grid, per_round)
        population = self.population_size or len(nodes)
        if len(nodes) < self.s.server.min_clients:
            return self._fail(
                rnd,
                f"only {len(nodes)} phones connected, min_clients is {self.s.server.min_clients}",
                timings,
            )
        rng = np.random.default_rng([self.s.data.seed, rnd])
        # sample indices: node ids are uint64 and must not pass through a float array
        picks = rng.choice(len(nodes), size=min(per_round, len(nodes)), replace=False)
        sampled = sorted(int(nodes[int(i)]) for i in picks)
        sampling_rate = min(1.0, len(sampled) / max(population, 1))
        ctx = make_round_context(
            self.s.privacy,
            round=rnd,
            num_sampled=len(sampled),
            sampling_rate=sampling_rate,
            controller=self.controller,
            seed=int(rng.integers(0, 2**31)),
        )
        if self.s.privacy.noise != "none":
            from fedlora.privacy.dp import PrivacyBudgetExceeded

            try:
                self.ledger.check_can_run(RoundPrivacy.from_context(ctx))
            except PrivacyBudgetExceeded as exc:
                log.warning("stopping: %s", exc)
                return RoundSummary(round=rnd, status="budget_exhausted", reason=str(exc))
        self.registry.start_round(self.run_info.id, rnd)
        self._learn_ranks(grid, sampled, rnd)
        timings["configure"] = time.perf_counter() - t0

        # ---- train
        t1 = time.perf_counter()
        messages: list[Message] = []
        sent_ranks: dict[int, int] = {}
        bytes_down = 0
        layout_digest = self.spec.factor_layout.digest()
        for node in sampled:
            rank = self.node_ranks.get(node, self.ranks[0])
            sent_ranks[node] = rank
            instr = RoundInstructions(
                round=rnd,
                rank=rank,
                r_max=self.r_max,
                local_steps=self.s.client.local_steps,
                batch_size=self.s.client.batch_size,
                micro_batch_size=self.s.client.micro_batch_size,
                learning_rate=self.s.client.learning_rate,
                seed=int(rng.integers(0, 2**31)),
                layout_digest=layout_digest,
                round_ranks=",".join(str(r) for r in self.ranks),
                rule=self.s.aggregation.rule,
                secure_aggregation=self.s.privacy.secure_aggregation,
                deadline_s=self.s.client.round_deadline_s,
            )
            content = RecordDict({ROUND: instr.to_record(), PRIVACY: ConfigRecord(ctx.to_config())})
            put_adapter(content, COMMUNITY, self.views[rank])
            bytes_down += self.views[rank].num_parameters * 4
            messages.append(Message(content, node, "train", group_id=str(rnd)))
        replies = list(grid.send_and_receive(messages, timeout=self.s.server.round_timeout_s))
        timings["train"] = time.perf_counter() - t1

        reports: dict[int, PhoneReport] = {}
        vectors: dict[int, np.ndarray] = {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.info("round %d: phone %d failed: %s", rnd, node, reply.error.reason)
                continue
            try:
                report = PhoneReport.from_record(reply.content.config_records.get(REPORT))
            except FedloraError as exc:
                log.warning("round %d: phone %d sent a malformed reply: %s", rnd, node, exc)
                continue
            reports[node] = report
            if report.status == "trained" and not self.s.privacy.secure_aggregation:
                rec = reply.content.array_records.get(VECTOR)
                if rec is None or "vector" not in rec:
                    log.warning("round %d: phone %d trained but sent no vector", rnd, node)
                    continue
                vectors[node] = rec["vector"].numpy()
        trained = sorted(n for n, r in reports.items() if r.status == "trained")
        not_allowed = sum(1 for r in reports.values() if r.status == "not_allowed")

        # ---- secure / plain sum, or (rules that need each phone) per-phone accumulation
        t2 = time.perf_counter()
        ranked: RankedSum | None = None
        aggregate: Aggregate | None = None
        try:
            if self.per_phone:
                aggregate, contributors = self._aggregate_each(
                    rnd, ctx, trained, vectors, reports, sent_ranks
                )
            else:
                ranked, contributors = self._sum(
                    grid, rnd, ctx, trained, vectors, reports, sent_ranks
                )
        except (RoundAborted, SecAggError) as exc:
            return self._fail(rnd, str(exc), timings, sampled=sampled, reports=reports)
        stage = "secure_sum" if self.s.privacy.secure_aggregation else "sum"
        timings["accumulate" if self.per_phone else stage] = time.perf_counter() - t2

        # ---- aggregate + publish
        t3 = time.perf_counter()
        try:
            if aggregate is None:
                if ranked is None:  # unreachable: the sum path always yields a sum
                    raise RoundAborted("no sum and no per-phone aggregate to publish")
                rule = make_sum_aggregator(
                    self.s.aggregation,
                    self.spec,
                    starting_views=self.views,
                    community=self.community,
                )
                state = rule.accumulate_sum(rule.init_state(), ranked)
                aggregate = rule.finalize(state)
            result = finish_round(
                self.community, aggregate, self.optimizer, self.opt_state, self.ranks
            )
        except FedloraError as exc:
            return self._fail(
                rnd, f"aggregation failed: {exc}", timings, sampled=sampled, reports=reports
            )
        timings["aggregate"] = time.perf_counter() - t3

        if self.s.privacy.noise != "none":
            self.ledger.record(RoundPrivacy.from_context(ctx))
        new_community = result.community.with_meta(
            version=rnd, round=rnd, producer="fedlora-server"
        )
        views = {r: v.adapter.with_meta(version=rnd, round=rnd) for r, v in result.views.items()}
        losses_before = [r.loss_before for r in reports.values() if r.loss_before is not None]
        losses_after = [r.loss_after for r in reports.values() if r.loss_after is not None]
        community_loss = float(np.mean(losses_before)) if losses_before else None
        rank_mix: dict[int, int] = {}
        for n in trained:
            rank_mix[reports[n].rank] = rank_mix.get(reports[n].rank, 0) + 1
        bytes_up = sum(r.bytes_up for r in reports.values())
        dropouts = [n for n in sampled if n not in reports or reports[n].status != "trained"]
        t4 = time.perf_counter()
        pub = RoundPublication(
            community=new_community,
            views=views,
            metrics=RoundMetrics(
                participants=contributors,
                dropouts=len(dropouts),
                rank_mix=rank_mix,
                bytes_up=bytes_up,
                bytes_down=bytes_down,
                loss=community_loss,
                perplexity=math.exp(community_loss) if community_loss is not None else None,
                timings=timings,
                extra={
                    "local_loss_after": float(np.mean(losses_after)) if losses_after else 0.0,
                    "publish_error": float(result.publish_error),
                },
            ),
            privacy=PrivacySnapshot.from_ledger(self.ledger, clip_norm=ctx.clip_norm)
            if self.s.privacy.noise != "none"
            else None,
            participants=trained,
            dropouts=dropouts,
        )
        committed = self.registry.publish_round(self.run_info.id, rnd, pub)
        timings["publish"] = time.perf_counter() - t4
        self.community = new_community
        self.views = views
        self.opt_state = result.optimizer_state
        return RoundSummary(
            round=rnd,
            status="published",
            sampled=len(sampled),
            contributors=contributors,
            dropouts=len(dropouts),
            not_allowed=not_allowed,
            rank_mix=rank_mix,
            epsilon=self.ledger.epsilon if self.s.privacy.noise != "none" else None,
            community_loss=community_loss,
            local_loss_after=float(np.mean(losses_after)) if losses_after else None,
            bytes_up=bytes_up,
            bytes_down=bytes_down,
            timings=timings,
            version_hash=committed.community.content_hash,
        )

    # ------------------------------------------------------------------ sums
    def _linear_rule(self) -> LinearAggregator:
        rule = make_sum_aggregator(
            self.s.aggregation, self.spec, starting_views=self.views, community=self.community
        )
        if not isinstance(rule, LinearAggregator):
            raise RoundAborted(f"rule {self.s.aggregation.rule!r} cannot aggregate sums")
        return rule

    def _sum(
        self,
        grid: Grid,
        rnd: int,
        ctx: RoundContext,
        trained: list[int],
        vectors: dict[int, np.ndarray],
        reports: dict[int, PhoneReport],
        sent_ranks: dict[int, int],
    ) -> tuple[RankedSum, int]:
        min_clients = self.s.server.min_clients
        rule = self._linear_rule()
        if self.s.privacy.secure_aggregation:
            if len(trained) < min_clients:
                raise RoundAborted(
                    f"only {len(trained)} phones trained, min_clients is {min_clients}"
                )
            payload_len = rule.payload_size + (1 if ctx.adaptive_clipping else 0)
            layout = ContributionLayout(payload_len=payload_len, ranks=self.ranks)
            from fedlora.privacy.dp import plan_quantization

            bound = layout.coordinate_bound(
                plan_quantization(ctx, payload_len).max_abs, max_weight=1 << 20
            )
            cfg = SecAggConfig(
                bits=self.s.privacy.secagg_bits, coordinate_bound=bound, min_survivors=min_clients
            )
            total = run_secagg(
                grid, trained, layout.size, cfg, round_id=rnd, timeout=self.s.server.round_timeout_s
            )
            secure = layout.unpack(total)
            contributors = secure.num_contributors
            if contributors < min_clients:
                raise RoundAborted(f"{contributors} survivors < min_clients {min_clients}")
            payload = pipeline_for_round(ctx, self.controller).postprocess_server(
                secure.payload, ctx.with_contributors(contributors)
            )
            weights = np.array([secure.weights[r] for r in self.ranks], dtype=np.float64)
        else:
            usable = [n for n in trained if n in vectors]
            contributors = len(usable)
            if contributors < min_clients:
                raise RoundAborted(
                    f"only {contributors} phones contributed, min_clients is {min_clients}"
                )
            expected = rule.payload_size + (1 if ctx.adaptive_clipping else 0)
            total_vec = np.zeros(expected, dtype=np.float64)
            for n in usable:
                v = vectors[n]
                if v.shape != (expected,) or not np.all(np.isfinite(v)):
                    raise RoundAborted(f"phone {n} sent a malformed vector {v.shape}")
                total_vec += v
            payload = pipeline_for_round(ctx, self.controller).postprocess_server(
                total_vec, ctx.with_contributors(contributors)
            )
            weights = self._plain_weights(usable, ctx, reports, sent_ranks)
        ranked = RankedSum(
            layout_digest=rule.layout_digest,
            ranks=self.ranks,
            payload=np.asarray(payload, dtype=np.float64),
            group_weights=weights,
            count=contributors,
        )
        return ranked, contributors

    def _aggregate_each(
        self,
        rnd: int,
        ctx: RoundContext,
        trained: list[int],
        vectors: dict[int, np.ndarray],
        reports: dict[int, PhoneReport],
        sent_ranks: dict[int, int],
    ) -> tuple[Aggregate, int]:
        """A rule that needs each phone's factors (FLoRA): no sum, one contribution a phone.

        Every phone's vector is its own delta at its rank in ``spec.rank_layout(rank)``
        (``client/contribute.py``), clipped and — in ``local`` mode — noised on the phone;
        with adaptive clipping its last coordinate is the clip bit. All vectors are checked
        first (rank one of the round's and the one the phone was sent, length for that rank,
        finite values), so a bad phone aborts the round before anything is accumulated; the
        weight mirrors :func:`fedlora.client.contribute.contribution_weight`.
        """
        min_clients = self.s.server.min_clients
        usable = [n for n in trained if n in vectors]
        contributors = len(usable)
        if contributors < min_clients:
            raise RoundAborted(
                f"only {contributors} phones contributed, min_clients is {min_clients}"
            )
        extra = 1 if ctx.adaptive_clipping else 0
        payloads: dict[int, np.ndarray] = {}
        bits = 0.0
        for n in usable:
            rank = _contribution_rank(n, reports[n], sent_ranks, self.ranks)
            v = vectors[n]
            expected = self.spec.rank_layout(rank).size + extra
            if v.shape != (expected,):
                raise RoundAborted(
                    f"phone {n} sent a malformed vector {v.shape}: its own rank-{rank} delta "
                    f"takes ({expected},)"
                )
            if not np.all(np.isfinite(v)):
                raise RoundAborted(f"phone {n} sent a vector with non-finite values")
            payloads[n] = v[: v.shape[0] - extra].astype(np.float64)
            if extra:
                bits += float(v[-1])
        if extra:  # the clip-bit sum feeds adaptive clipping, as on the sum path
            pipeline_for_round(ctx, self.controller).postprocess_server(
                np.array([bits]), ctx.with_contributors(contributors)
            )
        try:
            rule = make_aggregator(
                self.s.aggregation,
                self.spec,
                secure_aggregation=False,
                starting_views=self.views,
                community=self.community,
            )
            state = rule.init_state()
            for n in usable:
                weight = 1.0 if ctx.noise_mode != "none" else float(reports[n].num_examples)
                delta = self.spec.delta_from_vector(payloads[n], sent_ranks[n])
                state = rule.accumulate(
                    state, Contribution(delta=delta, weight=weight, client_id=str(n))
                )
            aggregate = rule.finalize(state)
        except FedloraError as exc:
            raise RoundAborted(f"aggregation failed: {exc}") from exc
        return aggregate, contributors

    def _plain_weights(
        self,
        nodes: Sequence[int],
        ctx: RoundContext,
        reports: dict[int, PhoneReport],
        sent_ranks: dict[int, int],
    ) -> np.ndarray:
        """Per-rank-group weight totals of the phones whose vectors were summed.

        A phone's contribution is encoded at the rank of the view it was sent (a phone that
        backed off to a lower rank to fit its memory zero-pads its delta back and reports the
        rank it trained). Mirrors :func:`fedlora.client.contribute.contribution_weight`: 1 per
        phone under DP, its example count otherwise.
        """
        weights = np.zeros(len(self.ranks), dtype=np.float64)
        for n in nodes:
            rank = _contribution_rank(n, reports[n], sent_ranks, self.ranks)
            w = 1.0 if ctx.noise_mode != "none" else float(reports[n].num_examples)
            weights[self.ranks.index(rank)] += w
        return weights

    def _fail(
        self,
        rnd: int,
        reason: str,
        timings: dict[str, float],
        *,
        sampled: Sequence[int] = (),
        reports: dict[int, PhoneReport] | None = None,
    ) -> RoundSummary:
        log.warning("round %d aborted: %s (community adapter unchanged)", rnd, reason)
        try:
            self.registry.fail_round(self.run_info.id, rnd, reason)
        except FedloraError as exc:
            log.warning("could not record the failure of round %d: %s", rnd, exc)
        reports = reports or {}
        return RoundSummary(
            round=rnd,
            status="aborted",
            reason=reason,
            sampled=len(sampled),
            dropouts=sum(1 for n in sampled if n not in reports),
            timings=timings,
        )


def _contribution_rank(
    node: int, report: PhoneReport, sent_ranks: Mapping[int, int], ranks: Sequence[int]
) -> int:
    """The rank a phone's upload is encoded at: that of the view it was sent. Its report says
    the rank it trained, which may be lower (memory back-off, delta zero-padded back), never
    higher; anything else is refused (RoundAborted)."""
    sent = sent_ranks.get(node)
    if sent is None or sent not in ranks:
        raise RoundAborted(f"phone {node} replied but was sent no view of this round's ranks")
    if not 1 <= report.rank <= sent:
        raise RoundAborted(
            f"phone {node} reports rank {report.rank} but was sent the rank-{sent} view: "
            "a phone trains at most the rank it was sent"
        )
    return sent
