"""On-device data hygiene: what a phone should not train on, and rehearsal against forgetting.

A phone's raw text is not all the user's: verification codes, missed-call notices,
"Message deleted" placeholders, delivery and bank notifications, and resent duplicates.
Training on them teaches the model boilerplate (and memorises one-time codes), and
duplicates over-weight a few texts. Real data carries no "this is automated" label, so the
filter decides from the **content** alone:

* ``too_short`` — fewer than ``min_words`` words or ``min_chars`` characters;
* ``automated`` — matches one of the patterns of machine-written messages below (codes,
  call logs, placeholders, notifications, carrier notices);
* ``exact_duplicate`` — the same text (after trimming) seen before;
* ``near_duplicate`` — the same after normalising case, punctuation and whitespace,
  or a word-shingle Jaccard similarity ≥ ``near_threshold`` with a kept text (resent
  messages with a changed emoji, time or typo).

**Rehearsal** mixes a configurable fraction of generic text (the kind the base was trained
on) into the private examples, so a few local steps on one person's texts do not pull the
model away from general language (catastrophic forgetting). Both are counted in the
report: dropped per reason, rehearsal examples used. Counts only — never the texts.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

DROP_REASONS = ("too_short", "automated", "exact_duplicate", "near_duplicate")

_AUTOMATED_PATTERNS: tuple[tuple[str, str], ...] = (
    # one-time codes: "Your verification code is 123456", "G-123456 is your Google code"
    (
        "code",
        r"\b(verification|security|login|sign[- ]in|confirmation|one[- ]time|access)\s+code\b",
    ),
    ("code", r"\b(code|otp|pin|passcode)\b\s*(is|:)?\s*[A-Z]?-?\d{4,8}\b"),
    ("code", r"^\W*[A-Z]?-?\d{4,8}\s+is\s+your\b"),
    ("code", r"\bdo not share (it|this|this code|the code)\b"),
    # call logs
    ("call", r"\bmissed (voice |video )?call\b"),
    ("call", r"^\W*call ended\b"),
    ("call", r"\b(new )?voicemails?\b"),
    # placeholders for deleted or media messages
    ("placeholder", r"^\W*(this )?message (was )?deleted\W*$"),
    ("placeholder", r"^\W*you deleted this message\W*$"),
    ("placeholder", r"^\s*<\s*media omitted\s*>\s*$"),
    (
        "placeholder",
        r"^\s*\[\s*(image|photo|video|sticker|gif|audio|document|contact|location|"
        r"voice (note|message)[^\]]*)\s*\]\s*$",
    ),
    # app and service notifications
    (
        "notification",
        r"\byour (package|parcel|order|delivery) (has been|was|is) "
        r"(delivered|shipped|dispatched|out for delivery)\b",
    ),
    ("notification", r"\b(statement|bill|invoice) is (now )?(ready|available)\b"),
    ("notification", r"\blow battery\b"),
    ("notification", r"^\W*reminder:\s+your (appointment|booking|reservation)\b"),
    # carrier messages
    ("carrier", r"\bdata (plan|allowance|bundle) is \d+\s*% used\b"),
    ("carrier", r"\broaming charges\b"),
    ("carrier", r"\bwelcome to the network\b"),
)
_COMPILED = tuple((kind, re.compile(p, re.IGNORECASE)) for kind, p in _AUTOMATED_PATTERNS)
_WORD = re.compile(r"[a-z0-9']+")


def automated_kind(text: str) -> str | None:
    """Which kind of machine-written message ``text`` looks like, or None."""
    for kind, pattern in _COMPILED:
        if pattern.search(text):
            return kind
    return None


def normalise(text: str) -> str:
    """Case, punctuation, emoji and whitespace folded away (near-duplicate key).

    Digits are kept: two health logs that differ only in their numbers are different data.
    """
    return " ".join(_WORD.findall(text.lower()))


def _shingles(norm: str, n: int = 3) -> frozenset[str]:
    words = norm.split()
    if len(words) < n:
        return frozenset({norm})
    return frozenset(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


@dataclass(frozen=True)
class HygieneConfig:
    enabled: bool = True
    min_words: int = 3
    min_chars: int = 10
    near_threshold: float = 0.9
    max_pairwise: int = 4000
    """Above this many texts, near duplicates are found by normalised key only (O(n))."""


@dataclass(frozen=True)
class HygieneResult:
    kept: tuple[str, ...]
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def num_dropped(self) -> int:
        return sum(self.dropped.values())


def filter_texts(texts: Sequence[str], cfg: HygieneConfig | None = None) -> HygieneResult:
    """Keep the texts worth training on (first occurrence wins); count the rest by reason."""
    cfg = cfg or HygieneConfig()
    dropped = dict.fromkeys(DROP_REASONS, 0)
    if not cfg.enabled:
        return HygieneResult(tuple(texts), dropped)
    kept: list[str] = []
    exact: set[str] = set()
    keys: set[str] = set()
    shingles: list[frozenset[str]] = []
    pairwise = len(texts) <= cfg.max_pairwise
    for raw in texts:
        text = raw.strip()
        if len(text) < cfg.min_chars or len(text.split()) < cfg.min_words:
            dropped["too_short"] += 1
            continue
        if automated_kind(text) is not None:
            dropped["automated"] += 1
            continue
        if text in exact:
            dropped["exact_duplicate"] += 1
            continue
        norm = normalise(text)
        sh = _shingles(norm)
        if norm in keys or (
            pairwise and any(jaccard(sh, other) >= cfg.near_threshold for other in shingles)
        ):
            dropped["near_duplicate"] += 1
            continue
        exact.add(text)
        keys.add(norm)
        shingles.append(sh)
        kept.append(text)
    return HygieneResult(tuple(kept), dropped)


def rehearsal_count(num_private: int, fraction: float) -> int:
    """Generic examples that make up ``fraction`` of a mix with ``num_private`` private ones."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"rehearsal fraction must be in [0, 1), got {fraction}")
    return round(num_private * fraction / (1.0 - fraction))


def mix_rehearsal(
    private: Sequence[str], generic: Sequence[str], fraction: float, seed: int
) -> tuple[tuple[str, ...], int]:
    """``private`` plus a seeded sample of ``generic`` making up ``fraction`` of the mix.

    Returns the mixed, shuffled texts and how many generic examples went in (capped by how
    many generic texts there are).
    """
    n = min(rehearsal_count(len(private), fraction), len(generic))
    if n == 0:
        return tuple(private), 0
    rng = random.Random(seed)
    mixed = list(private) + rng.sample(list(generic), n)
    rng.shuffle(mixed)
    return tuple(mixed), n


def default_rehearsal_corpus(n_docs: int = 256, seed: int = 0) -> tuple[str, ...]:
    """Generic text shipped with the app for rehearsal, from a seed stream of its own (not
    the federation's generic held-out set, which measures forgetting)."""
    from fedlora.data.seeding import stable_seed
    from fedlora.data.synthetic import generate_generic_corpus

    return tuple(generate_generic_corpus(n_docs, stable_seed("rehearsal", seed)))
