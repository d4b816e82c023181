"""Synthetic phone text: determinism, population independence, style strength, noise."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pytest

from fedlora.data import (
    KINDS,
    SYSTEM_KIND,
    TOPICS,
    Example,
    UserProfile,
    generate_generic_corpus,
    generate_user_examples,
    make_population,
    stable_seed,
)
from fedlora.data.style import UserStyle, abbreviate, punctuate
from fedlora.data.vocab import VOCAB

REPO = Path(__file__).resolve().parents[1]


def _digest(examples: list[Example]) -> str:
    h = hashlib.sha256()
    for e in examples:
        h.update(f"{e.user_id}\x1f{e.kind}\x1f{e.topic}\x1f{e.text}\x1e".encode())
    return h.hexdigest()


def test_same_seed_same_output_different_seed_different() -> None:
    a = make_population(5, seed=3)
    b = make_population(5, seed=3)
    assert a == b
    ex_a = generate_user_examples(a[0], 50, seed=11)
    assert ex_a == generate_user_examples(b[0], 50, seed=11)
    assert ex_a != generate_user_examples(a[0], 50, seed=12)
    assert make_population(5, seed=4) != a
    gen = generate_generic_corpus(30, seed=1)
    assert gen == generate_generic_corpus(30, seed=1)
    assert gen != generate_generic_corpus(30, seed=2)


def test_user_independent_of_population_size() -> None:
    small = make_population(10, seed=5)
    large = make_population(300, seed=5)
    assert small == large[:10]
    assert generate_user_examples(small[7], 20, seed=1) == generate_user_examples(
        large[7], 20, seed=1
    )
    assert len({p.user_id for p in large}) == 300
    assert [p.user_id for p in large] == sorted(p.user_id for p in large)


def test_generic_prefix_does_not_depend_on_n_docs() -> None:
    assert generate_generic_corpus(50, seed=9)[:20] == generate_generic_corpus(20, seed=9)


def test_deterministic_across_processes() -> None:
    code = (
        "import hashlib\n"
        "from fedlora.data import make_population, generate_user_examples, "
        "generate_generic_corpus\n"
        "h = hashlib.sha256()\n"
        "for p in make_population(6, 21):\n"
        "    for e in generate_user_examples(p, 25, 4):\n"
        "        h.update(f'{e.user_id}\\x1f{e.kind}\\x1f{e.topic}\\x1f{e.text}\\x1e'.encode())\n"
        "h.update('\\x1d'.join(generate_generic_corpus(40, 4)).encode())\n"
        "print(h.hexdigest())\n"
    )
    h = hashlib.sha256()
    for p in make_population(6, 21):
        for e in generate_user_examples(p, 25, 4):
            h.update(f"{e.user_id}\x1f{e.kind}\x1f{e.topic}\x1f{e.text}\x1e".encode())
    h.update("\x1d".join(generate_generic_corpus(40, 4)).encode())
    # a fixed PYTHONHASHSEED that (almost surely) differs from this process's random one
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == h.hexdigest()


def test_stable_seed_is_a_fixed_function() -> None:
    assert stable_seed("a", 1) == stable_seed("a", 1)
    assert stable_seed("a", 1) != stable_seed("a", 2)
    assert stable_seed("1") != stable_seed(1)  # types are part of the encoding
    assert stable_seed("ab", "c") != stable_seed("a", "bc")
    with pytest.raises(TypeError):
        stable_seed(1.5)  # type: ignore[arg-type]


def test_profiles_are_valid_distributions() -> None:
    for p in make_population(20, seed=0):
        assert len(p.topic_mix) == len(TOPICS) and len(p.kind_mix) == len(KINDS)
        assert math.isclose(sum(p.topic_mix), 1.0) and min(p.topic_mix) >= 0
        assert math.isclose(sum(p.kind_mix), 1.0) and min(p.kind_mix) >= 0
    with pytest.raises(ValueError, match="topic_mix"):
        UserProfile("u", (1.0,), (0.25,) * 4, UserStyle())
    with pytest.raises(ValueError, match="sum to 1"):
        UserProfile("u", (0.5,) * 8, (0.25,) * 4, UserStyle())


def test_topic_concentration_controls_topic_focus() -> None:
    focused = make_population(200, seed=1, topic_concentration=0.1)
    spread = make_population(200, seed=1, topic_concentration=10.0)
    assert sum(max(p.topic_mix) for p in focused) / 200 > 0.6
    assert sum(max(p.topic_mix) for p in spread) / 200 < 0.35


def test_examples_follow_profile_and_lengths() -> None:
    profile = make_population(1, seed=2, topic_concentration=0.05)[0]
    examples = generate_user_examples(profile, 400, seed=0, noise_rate=0.0)
    assert len(examples) == 400
    assert all(e.user_id == profile.user_id for e in examples)
    assert {e.kind for e in examples} <= set(KINDS)
    counts = Counter(e.topic for e in examples)
    assert counts.most_common(1)[0][0] == profile.main_topic
    for e in examples:
        words = len(e.text.split())
        assert 8 <= words <= 60, e.text
        assert "\n" not in e.text and e.text == e.text.strip()


def test_generic_corpus_is_varied_and_covers_everything() -> None:
    docs = generate_generic_corpus(2000, seed=0)
    assert len(set(docs)) / len(docs) > 0.9
    text = "\n".join(docs).lower()
    for topic in TOPICS:  # every topic's vocabulary shows up
        assert VOCAB[topic].places[0] in text, topic
    assert "resting hr" in text or "heart rate" in text  # health logs
    assert " km" in text or " mi" in text  # activity logs
    assert "percent" in text or "include" in text  # encyclopedic sentences
    # neutral: no per-user tics (catchphrases / sign-offs / emoji are user style only)
    assert "living the dream" not in text and "ttyl" not in text and ":)" not in text
    words = [len(d.split()) for d in docs]
    assert min(words) >= 8 and max(words) <= 60


def _characteristic_tokens(texts: list[str]) -> set[str]:
    """Tokens in at least a fifth of a user's texts."""
    df = Counter(tok for t in texts for tok in set(t.lower().split()))
    return {tok for tok, c in df.items() if c >= len(texts) / 5}


def test_users_have_distinct_consistent_styles() -> None:
    users = make_population(8, seed=13)
    texts = {u.user_id: [e.text for e in generate_user_examples(u, 120, 0, 0.0)] for u in users}
    common = {"the", "to", "at", "a", "i", "and", "you", "-", "of"}
    sigs = {uid: _characteristic_tokens(t) - common for uid, t in texts.items()}
    ids = sorted(sigs)
    for i, a in enumerate(ids):
        assert sigs[a], f"{a} has no characteristic tokens"
        for b in ids[i + 1 :]:
            union = sigs[a] | sigs[b]
            jaccard = len(sigs[a] & sigs[b]) / len(union)
            assert jaccard < 0.5, (a, b, sigs[a], sigs[b])


def _bigram_logloss(train: list[str], test: list[str], vocab: set[str]) -> float:
    """Per-token cross-entropy of an add-0.1 smoothed word-bigram model."""
    uni: Counter[str] = Counter()
    bi: Counter[tuple[str, str]] = Counter()
    for t in train:
        toks = ["<s>", *t.lower().split()]
        uni.update(toks)
        bi.update(pairwise(toks))
    v = len(vocab) + 1
    total, n = 0.0, 0
    for t in test:
        toks = ["<s>", *t.lower().split()]
        for prev, cur in pairwise(toks):
            total -= math.log((bi[(prev, cur)] + 0.1) / (uni[prev] + 0.1 * v))
            n += 1
    return total / n


def test_own_text_predicts_own_heldout_better_than_others() -> None:
    """The property personalisation needs: a user's own text is the best model of them."""
    users = make_population(6, seed=17)
    data = {u.user_id: generate_user_examples(u, 160, 1, 0.0) for u in users}
    texts = {uid: [e.text for e in ex] for uid, ex in data.items()}
    vocab = {tok for ts in texts.values() for t in ts for tok in t.lower().split()}
    for uid, ts in texts.items():
        train, test = ts[:120], ts[120:]
        own = _bigram_logloss(train, test, vocab)
        for other, other_ts in texts.items():
            if other != uid:
                assert own < _bigram_logloss(other_ts[:120], test, vocab) - 0.2, (uid, other)


def test_noise_is_marked_and_replaces_at_the_given_rate() -> None:
    profile = make_population(1, seed=4)[0]
    clean = generate_user_examples(profile, 2000, seed=8, noise_rate=0.0)
    noisy = generate_user_examples(profile, 2000, seed=8, noise_rate=0.1)
    assert len(noisy) == 2000
    assert all(e.kind != SYSTEM_KIND for e in clean)
    system = [e for e in noisy if e.kind == SYSTEM_KIND]
    changed = sum(a != b for a, b in zip(clean, noisy, strict=True))
    # noise replaces ~10% of texts in place; the other texts are exactly the clean ones
    assert 0.07 * 2000 < changed < 0.13 * 2000
    assert 0.5 * changed < len(system) < changed  # mostly system messages, some duplicates
    assert all(e.user_id == profile.user_id for e in system)
    texts = {e.text for e in system}
    assert any("verification code" in t or "code" in t for t in texts)
    # every non-system replacement duplicates an earlier clean text
    for a, b in zip(clean, noisy, strict=True):
        if a != b and b.kind != SYSTEM_KIND:
            assert b in clean


def test_style_helpers() -> None:
    pairs = (("tomorrow", "tmrw"), ("you", "u"))
    assert abbreviate("See You tomorrow, young one", pairs) == "See u tmrw, young one"
    assert punctuate("Nice. Really? Yes! 5.2 km.", "excited") == "Nice! Really?! Yes!!! 5.2 km!"
    assert punctuate("Nice. Ok.", "trailing") == "Nice... Ok..."
    assert punctuate("Nice. Ok?", "none") == "Nice Ok?"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_users": -1, "seed": 0}, "num_users"),
        ({"num_users": 2, "seed": -1}, "seed"),
        ({"num_users": 2, "seed": 0, "topic_concentration": 0.0}, "topic_concentration"),
    ],
)
def test_population_errors(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_population(**kwargs)  # type: ignore[arg-type]


def test_generation_errors() -> None:
    p = make_population(1, 0)[0]
    with pytest.raises(ValueError, match="noise_rate"):
        generate_user_examples(p, 5, 0, noise_rate=1.0)
    with pytest.raises(ValueError, match="n must be"):
        generate_user_examples(p, -1, 0)
    with pytest.raises(ValueError, match="n_docs"):
        generate_generic_corpus(-1, 0)
    assert generate_user_examples(p, 0, 0) == []
