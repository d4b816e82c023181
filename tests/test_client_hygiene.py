"""On-device data hygiene: content-based filtering and rehearsal mixing."""

from __future__ import annotations

import random

import pytest

from fedlora.client.hygiene import (
    HygieneConfig,
    automated_kind,
    default_rehearsal_corpus,
    filter_texts,
    mix_rehearsal,
    rehearsal_count,
)
from fedlora.data.example import SYSTEM_KIND
from fedlora.data.noise import system_text
from fedlora.data.synthetic import generate_user_examples, make_population

AUTOMATED = [
    "Your verification code is 482913",
    "PayPal code: 112233. Do not share it with anyone.",
    "G-551234 is your Google verification code",
    "Missed call from +1 555 0123",
    "Call ended 12:04",
    "You have 1 new voicemail",
    "This message was deleted",
    "Your parcel has been delivered to the front door",
    "Your monthly statement is ready to view online",
    "Your data plan is 80% used this month",
    "Reminder: your appointment is on 3/4 at 10:15",
]
HUMAN = [
    "Can you call me back when you're free? The code for the gate is on the fridge.",
    "Missed the bus again, I'll be 10 minutes late to the call.",
    "Deleted the old photos from the shared album, check if yours are still there.",
    "Slept 6.5h, resting hr 51, mood ok, water 5 glasses",
    "Package for grandma: scarf, biscuits and the photo book.",
]


@pytest.mark.parametrize("text", AUTOMATED)
def test_automated_messages_are_recognised_by_content(text: str) -> None:
    assert automated_kind(text) is not None


@pytest.mark.parametrize("text", HUMAN)
def test_human_text_with_similar_words_is_kept(text: str) -> None:
    assert automated_kind(text) is None


def test_reasons_are_counted() -> None:
    texts = [
        "Dinner at 8 tonight with the Garcias, bring wine.",
        "Dinner at 8 tonight with the Garcias, bring wine.",  # exact duplicate
        "dinner at 8 tonight with the garcias -- bring wine!!",  # near duplicate
        "ok",  # too short
        "Your verification code is 123456",  # automated
        "Took the long way home along the river, legs are tired.",
    ]
    result = filter_texts(texts)
    assert result.kept == (texts[0], texts[5])
    assert result.dropped == {
        "too_short": 1,
        "automated": 1,
        "exact_duplicate": 1,
        "near_duplicate": 1,
    }
    assert result.num_dropped == 4
    assert filter_texts(texts, HygieneConfig(enabled=False)).kept == tuple(texts)


def test_noisy_synthetic_user_data_is_cleaned_without_kind_labels() -> None:
    """The generator's noise (system messages, resent duplicates) is removed from the texts
    alone, and no genuine user text is lost."""
    lost = caught = noise = 0
    for user in make_population(25, seed=3):
        examples = generate_user_examples(user, 50, seed=3, noise_rate=0.2)
        result = filter_texts([e.text for e in examples])
        genuine = {e.text for e in examples if e.kind != SYSTEM_KIND}
        kept = set(result.kept)
        lost += len(genuine - kept)
        assert not kept - genuine, "a system message survived the filter"
        noise += sum(e.kind == SYSTEM_KIND for e in examples)
        caught += result.dropped["automated"] + result.dropped["too_short"]
    assert lost == 0
    assert noise > 50 and caught == noise


def test_generator_system_messages_all_recognised() -> None:
    r = random.Random(11)
    texts = [system_text(r) for _ in range(500)]
    result = filter_texts(texts)
    assert result.kept == ()


def test_rehearsal_mix_fraction_and_determinism() -> None:
    private = [f"private note number {i} about the garden" for i in range(30)]
    generic = default_rehearsal_corpus(64, seed=1)
    assert rehearsal_count(30, 0.25) == 10
    mixed, n = mix_rehearsal(private, generic, 0.25, seed=5)
    assert n == 10 and len(mixed) == 40
    assert set(private) <= set(mixed)
    assert len(set(mixed) & set(generic)) == 10
    assert mix_rehearsal(private, generic, 0.25, seed=5) == (mixed, n)
    assert mix_rehearsal(private, generic, 0.0, seed=5) == (tuple(private), 0)
    with pytest.raises(ValueError):
        rehearsal_count(3, 1.0)


def test_rehearsal_corpus_is_not_the_heldout_generic_set() -> None:
    from fedlora.data.federated import generic_heldout

    assert not set(default_rehearsal_corpus(64, 0)) & set(generic_heldout(0))
