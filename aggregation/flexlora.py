"""FlexLoRA: fuse the products, then SVD back to each phone's rank.

Bai et al., "Federated Fine-tuning of Large Language Models under Heterogeneous Tasks and
Client Resources", NeurIPS 2024. The server forms the full-size weighted average
``Σ wᵢ BᵢAᵢ / Σ wᵢ`` — so heterogeneous ranks mix without padding artefacts — and gives each
client the best rank-``rᵢ`` approximation by SVD.

With deltas, phone ``i``'s change is ``Δᵢ = s · [(B + dB)(A + dA) − B A]`` where ``(B, A)`` is
the view it started from (:mod:`fedlora.aggregation.dense`). The aggregate is the dense
``Σ wᵢ Δᵢ / Σ wᵢ``: **exact**. The community is re-factored to ``r_max`` for publishing and
to each rank for the views (SVD; the errors are reported).

Two variants:

* factor upload (``dense_upload=False``): the server computes each ``Δᵢ`` from the phone's
  factor delta — **not linear** (``dB dA`` is a product), so not usable with secure sums;
* dense upload (``dense_upload=True``): the phone computes ``Δᵢ`` itself and uploads it in
  the :class:`~fedlora.aggregation.dense.DenseLayout`; ``Δᵢ`` is a linear quantity, so the
  rule runs on secure sums and gives the same result (**linear** and exact), at the cost of a
  ``d_out × d_in`` upload per module.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np

from fedlora.adapter import LoraAdapter

from .contribution import AggregationSpec, Contribution
from .dense import DenseLayout, check_views, dense_increment
from .errors import ContributionError, NotLinearError
from .linear import LinearAggregator
from .ranked_sum import RankedSum


class FlexLoRA(LinearAggregator):
    """Weighted mean of dense ΔW changes (exact; linear only with ``dense_upload``)."""

    name = "flexlora"
    exact = True
    nested = False
    space = "dense"
    why_not_linear = (
        "FlexLoRA multiplies each phone's factors (Σ wᵢ BᵢAᵢ) and a sum of factors does not "
        "determine a sum of products; use the dense-upload variant (phones upload "
        "ΔWᵢ = scale·BᵢAᵢ changes) under secure aggregation"
    )

    def __init__(
        self,
        spec: AggregationSpec,
        starting_views: Mapping[int, LoraAdapter] | None,
        *,
        dense_upload: bool = False,
    ) -> None:
        super().__init__(spec)
        self.views = check_views(spec, starting_views, self.name)
        self.dense_upload = dense_upload
        self.linear = dense_upload
        self.layout = DenseLayout(spec.linear_shapes)
        text = f"{self.name}|{','.join(map(str, spec.ranks))}|{self.layout.to_json()}"
        self._digest = hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def layout_digest(self) -> str:
        return self._digest

    @property
    def payload_size(self) -> int:
        return self.layout.size

    @property
    def publish_rank(self) -> int | None:
        return self.spec.r_max

    def check(self, c: Contribution) -> int:
        rank = super().check(c)
        if rank not in self.views:
            raise ContributionError(
                c.client_id, "<rank>", f"no starting view for rank {rank}: cannot form its ΔW"
            )
        return rank

    def scatter(self, target: np.ndarray, c: Contribution, scale: float) -> None:
        view = self.views[c.rank]
        for module, pair in c.delta:
            inc = dense_increment(view.pairs[module], pair, scale * self.spec.scalings[module])
            self.layout.block(target, module)[...] += inc

    def normalize(self, state: RankedSum) -> dict[str, np.ndarray]:
        inv = 1.0 / state.total_weight
        return {m: self.layout.block(state.payload, m) * inv for m in self.spec.modules}

    def accumulate_sum(self, state: RankedSum, ranked_sum: RankedSum) -> RankedSum:
        if not self.dense_upload:
            raise NotLinearError(self.name, self.why_not_linear)
        return super().accumulate_sum(state, ranked_sum)
