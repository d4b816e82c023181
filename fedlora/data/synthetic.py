"""Deterministic synthetic phone text: a population of users, their private texts, and a
style-free generic corpus for pretraining the base model.

Real private phone text cannot be shipped with a test suite, yet federated LoRA needs data with
the properties that matter: users write about different topics (non-IID), each user has a
strong personal style (so personalisation measurably lowers their held-out loss), and some
raw texts are automated noise. Everything is reproducible from integer seeds alone: user ``i``
is drawn from ``SeedSequence([seed, i])`` (so it does not depend on the population size) and
texts from SHA-256-derived seeds (never Python's per-process ``hash()``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from itertools import accumulate

import numpy as np

from fedlora.data.example import KINDS, TOPICS, Example
from fedlora.data.noise import inject_noise
from fedlora.data.seeding import draw_weighted, pick, stable_seed
from fedlora.data.style import UserStyle, neutral_style, sample_style, stylize
from fedlora.data.templates import BODY_BUILDERS

DEFAULT_KIND_WEIGHTS: tuple[float, ...] = (0.45, 0.2, 0.15, 0.2)
"""Mean share of messages, notes, health logs and activity logs over users."""
KIND_CONCENTRATION = 4.0
"""Dirichlet concentration of a user's kind mix around :data:`DEFAULT_KIND_WEIGHTS`."""

GENERIC_KINDS: tuple[str, ...] = ("encyclopedic", *KINDS)
GENERIC_KIND_WEIGHTS: tuple[float, ...] = (0.3, 0.3, 0.15, 0.125, 0.125)


def _check_mix(name: str, mix: tuple[float, ...], labels: tuple[str, ...]) -> None:
    if len(mix) != len(labels):
        raise ValueError(
            f"{name} needs {len(labels)} weights ({', '.join(labels)}), got {len(mix)}"
        )
    if any(not math.isfinite(w) or w < 0 for w in mix):
        raise ValueError(f"{name} weights must be finite and non-negative, got {mix}")
    if not math.isclose(sum(mix), 1.0, abs_tol=1e-6):
        raise ValueError(f"{name} must sum to 1, got {sum(mix)}")


@dataclass(frozen=True)
class UserProfile:
    """One synthetic phone owner: what they write about, what kinds of text, and how."""

    user_id: str
    topic_mix: tuple[float, ...]  # over TOPICS
    kind_mix: tuple[float, ...]  # over KINDS
    style: UserStyle

    def __post_init__(self) -> None:
        if not self.user_id:
            raise ValueError("user_id must be a non-empty string")
        _check_mix("topic_mix", self.topic_mix, TOPICS)
        _check_mix("kind_mix", self.kind_mix, KINDS)

    @property
    def main_topic(self) -> str:
        """The topic this user writes about most."""
        return TOPICS[max(range(len(TOPICS)), key=lambda i: self.topic_mix[i])]


def user_id_for(index: int) -> str:
    """Id of the ``index``-th synthetic user; zero-padded so ids sort in index order."""
    return f"user_{index:05d}"


def _normalised(values: np.ndarray) -> tuple[float, ...]:
    values = np.clip(np.nan_to_num(values.astype(np.float64), nan=0.0), 0.0, None)
    total = float(values.sum())
    if total <= 0.0:  # Dirichlet underflow at tiny concentrations: fall back to one-hot
        values = np.zeros_like(values)
        values[0] = 1.0
        total = 1.0
    out = [float(v) / total for v in values]
    out[-1] = max(0.0, 1.0 - sum(out[:-1]))
    return tuple(out)


def make_user(index: int, seed: int, topic_concentration: float = 0.5) -> UserProfile:
    """The ``index``-th user of the population drawn with ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    topic_mix = _normalised(rng.dirichlet(np.full(len(TOPICS), topic_concentration)))
    kind_mix = _normalised(rng.dirichlet(KIND_CONCENTRATION * np.asarray(DEFAULT_KIND_WEIGHTS)))
    return UserProfile(user_id_for(index), topic_mix, kind_mix, sample_style(rng))


def make_population(
    num_users: int, seed: int, topic_concentration: float = 0.5
) -> list[UserProfile]:
    """``num_users`` independent users; user ``i`` is the same whatever ``num_users`` is.

    ``topic_mix`` ~ Dirichlet(``topic_concentration``): small values give users who write
    about one or two topics, large values users who write about everything alike.
    """
    if num_users < 0:
        raise ValueError(f"num_users must be >= 0, got {num_users}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if not (topic_concentration > 0 and math.isfinite(topic_concentration)):
        raise ValueError(f"topic_concentration must be > 0, got {topic_concentration}")
    return [make_user(i, seed, topic_concentration) for i in range(num_users)]


def generate_user_examples(
    profile: UserProfile, n: int, seed: int, noise_rate: float = 0.05
) -> list[Example]:
    """``n`` texts written (or received) by ``profile``'s user, reproducible from ``seed``.

    Each text picks a topic from ``topic_mix`` and a kind from ``kind_mix`` and is dressed in
    the user's style. With probability ``noise_rate`` a text is replaced by an automated
    message (``kind="system"``) or a duplicate of an earlier text; the clean texts are the
    same for every ``noise_rate``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= noise_rate < 1.0:
        raise ValueError(f"noise_rate must be in [0, 1), got {noise_rate}")
    r = random.Random(stable_seed("user-examples", seed, profile.user_id))
    topic_cum = list(accumulate(profile.topic_mix))
    kind_cum = list(accumulate(profile.kind_mix))
    style = profile.style
    clean: list[Example] = []
    for _ in range(n):
        topic = draw_weighted(r, topic_cum, TOPICS)
        kind = draw_weighted(r, kind_cum, KINDS)
        body = BODY_BUILDERS[kind](topic, style, r)
        clean.append(Example(stylize(body, style, kind, r), topic, kind, profile.user_id))
    if noise_rate == 0.0:
        return clean
    noise_rng = random.Random(stable_seed("user-noise", seed, profile.user_id))
    return inject_noise(clean, noise_rate, noise_rng)


def generate_generic_corpus(n_docs: int, seed: int) -> list[str]:
    """``n_docs`` style-free texts over all topics and kinds, plus encyclopedic sentences.

    This is what the small base model is pretrained on: it learns the general shape of
    messages, notes and logs (every layout and number format appears, tied to nobody), so
    that a LoRA only has to learn the individual user. Document ``i`` does not depend on
    ``n_docs``.
    """
    if n_docs < 0:
        raise ValueError(f"n_docs must be >= 0, got {n_docs}")
    r = random.Random(stable_seed("generic-corpus", seed))
    kind_cum = list(accumulate(GENERIC_KIND_WEIGHTS))
    docs: list[str] = []
    for _ in range(n_docs):
        kind = draw_weighted(r, kind_cum, GENERIC_KINDS)
        topic = pick(r, TOPICS)
        style = neutral_style(r)
        docs.append(stylize(BODY_BUILDERS[kind](topic, style, r), style, kind, r))
    return docs
