"""Neutral sentences for each kind of phone text, filled from a topic's vocabulary.

Builders here decide *what* a text says (topic words, numbers in the user's formats, log
layouts); :func:`fedlora.data.style.stylize` decides *how* it is dressed. Keeping the two
apart lets the generic pretraining corpus reuse the same builders with a neutral style.
All randomness comes from the ``random.Random`` passed in, so output is reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from itertools import accumulate

from fedlora.data import vocab
from fedlora.data.seeding import draw_weighted, pick, randint
from fedlora.data.style import (
    ACTIVITY_TYPES,
    UserStyle,
    capitalize,
    fmt_clock,
    fmt_decimal,
    fmt_distance,
)

MIN_WORDS = 8
MAX_WORDS = 60

MESSAGE_TEMPLATES: tuple[str, ...] = (
    "Can you {action} {time}?",
    "Don't forget to {action} {time}.",
    "I need to {action} before {event}.",
    "Just got back from {place}, it was {adj}.",
    "Are you coming to {event} {time}?",
    "{person} says we should {action}.",
    "Running late, still at {place}.",
    "Did you see {thing}?",
    "Meet at {place} at {clock}?",
    "Thinking we could {action} {time}.",
    "I'm at {place} with {person}.",
    "What time is {event}?",
    "Can't wait for {event}!",
    "Have you had a chance to {action}?",
    "I'll {action} and then {action2}.",
    "{event} was so {adj} today.",
    "Let me know if you want to {action}.",
    "Heading to {place} now.",
    "I forgot about {thing} again.",
    "Could you ask {person} about {thing}?",
    "So {adj} after {event}.",
    "Still waiting on {thing}.",
    "We should {action} {time}, what do you think?",
    "Walking {pet} first, then I'll {action}.",
    "{person} is bringing {item} to {event}.",
    "Please remember {thing} is {time}.",
    "Thanks for sorting {thing}, really appreciate it.",
    "Is {place} open {time}?",
    "Okay, I'll meet you at {place} at {clock}.",
    "Because of {event} I can't {action} {time}.",
)

ENCYCLOPEDIC_TEMPLATES: tuple[str, ...] = (
    "Most people {action} {freq}.",
    "It is common to {action} before {event}.",
    "{place} is a common place to {action}.",
    "Experts recommend that adults {action} {freq}.",
    "Surveys suggest that about {pct} percent of people {action} {freq}.",
    "Common examples of {topic} include {thing}, {thing2} and {thing3}.",
    "People often feel {adj} after {event}.",
    "{event} usually lasts between {lo} and {hi} minutes.",
    "The role of the {role} is to help people {action}.",
    "In many cities, {place} is busiest {freq}.",
    "Studies of {topic} often mention {thing} as a source of stress.",
    "A typical household buys {item} and {item2} {freq}.",
)

_SENTENCE_COUNT_CUM = (0.45, 0.85, 1.0)  # one, two or three sentences per message
_TIMED_HOURS = (7, 8, 9, 10, 12, 13, 15, 17, 18, 19, 20, 21)
_MINUTES = (0, 0, 15, 30, 30, 45)


_POOLS: dict[str, dict[str, tuple[str, ...]]] = {
    topic: {
        "thing": v.things,
        "action": v.actions,
        "place": v.places,
        "role": v.roles,
        "event": v.events,
        "adj": v.adjectives,
        "item": v.items,
        "time": vocab.TIME_REFS,
        "freq": vocab.FREQUENCIES,
        "day": vocab.DAYS,
    }
    for topic, v in vocab.VOCAB.items()
}


def a_an(word: str) -> str:
    """``"an"`` before a vowel sound (by spelling), else ``"a"``."""
    return "an" if word[:1].lower() in "aeiou" else "a"


class Slots(dict[str, str]):
    """Lazily filled template slots: ``"{thing2}"`` draws a second thing, and so on."""

    def __init__(self, topic: str, style: UserStyle, r: random.Random) -> None:
        super().__init__()
        self.topic = topic
        self.vocab = vocab.VOCAB[topic]
        self.style = style
        self.r = r

    def __missing__(self, key: str) -> str:
        base = key.rstrip("0123456789")
        value = self._draw(base)
        if base != key:  # "{thing2}" should differ from "{thing}": redraw a couple of times
            taken = {v for k, v in self.items() if k.rstrip("0123456789") == base}
            for _ in range(3):
                if value not in taken:
                    break
                value = self._draw(base)
        self[key] = value
        return value

    def _draw(self, base: str) -> str:
        r, style = self.r, self.style
        pools = _POOLS[self.topic]
        if base in pools:
            return pick(r, pools[base])
        if base == "person":
            return self.person()
        if base == "pet":
            return style.pet or pick(r, vocab.PET_NAMES)
        if base == "clock":
            return fmt_clock(pick(r, _TIMED_HOURS), pick(r, _MINUTES), style)
        if base == "topic":
            return self.topic
        if base == "pct":
            return str(randint(r, 10, 85, 5))
        if base == "lo":
            return str(pick(r, (15, 20, 30, 45)))
        if base == "hi":
            return str(pick(r, (60, 90, 120)))
        raise KeyError(f"unknown template slot {base!r}")

    def person(self) -> str:
        """A friend's name (often, for a user), a random name (generic text) or a role."""
        r, style = self.r, self.style
        if style.friends:
            if r.random() < style.friend_rate:
                return pick(r, style.friends)
        elif r.random() < 0.4:
            return pick(r, vocab.FIRST_NAMES)
        return f"my {pick(r, self.vocab.roles)}"


def _fill(template: str, slots: Slots) -> str:
    return capitalize(template.format_map(slots))


def _words(text: str) -> int:
    return len(text.split())


def message_body(topic: str, style: UserStyle, r: random.Random) -> str:
    """One to three chat sentences about ``topic``."""
    n = draw_weighted(r, _SENTENCE_COUNT_CUM, (1, 2, 3))
    sentences: list[str] = []
    while len(sentences) < n or _words(" ".join(sentences)) < MIN_WORDS:
        sentences.append(_fill(pick(r, MESSAGE_TEMPLATES), Slots(topic, style, r)))
    return " ".join(sentences)


def _join(parts: list[str], style: UserStyle) -> str:
    return style.list_sep.join(parts)


def _note_line(topic: str, style: UserStyle, r: random.Random) -> str:
    s = Slots(topic, style, r)
    form = randint(r, 0, 6)
    if form == 0:
        return _join([s["action"], s["action2"], s["action3"]], style)
    if form == 1:
        items = [s["item"], s["item2"], s["item3"]]
        return "buy " + _join(items, style)
    if form == 2:
        return f"remember to {s['action']} {s['time']}"
    if form == 3:
        return f"{s['day']}: {s['event']} at {s['clock']}, bring {s['item']}"
    if form == 4:
        return f"ask {s['person']} about {s['thing']}"
    if form == 5:
        return f"{s['thing']} due {s['time']}, then {s['action']}"
    return f"ideas for {s['event']}: " + _join([s["thing"], s["thing2"]], style)


def note_body(topic: str, style: UserStyle, r: random.Random) -> str:
    """A personal note or to-do line, led by the user's note prefix."""
    lines = [_note_line(topic, style, r)]
    while _words(" ".join(lines)) < MIN_WORDS - 1:
        lines.append(_note_line(topic, style, r))
    return f"{style.note_prefix} " + _join(lines, style)


def _log_tail(topic: str, style: UserStyle, r: random.Random) -> str:
    s = Slots(topic, style, r)
    form = randint(r, 0, 5)
    if form == 0:
        return f"worried about {s['thing']}"
    if form == 1:
        return f"{s['adj']} after {s['event']}"
    if form == 2:
        return f"need to {s['action']} {s['time']}"
    if form == 3:
        return f"spent the evening at {s['place']}"
    if form == 4:
        return f"thinking about {s['thing']}"
    return f"{s['adj']} day, {s['event']} {s['time']}"


def _log(pieces: list[str], sentence_style: bool, sep: str) -> str:
    if sentence_style:
        return " ".join(capitalize(p) + ("" if p.endswith(".") else ".") for p in pieces)
    return sep.join(pieces)


_HEALTH_CORE: tuple[tuple[str, str, str], ...] = (
    ("slept {sleep}h", "resting hr {hr}", "mood {mood}"),
    ("Sleep: {sleep} hrs", "HR {hr} bpm", "Mood: {mood}"),
    ("{sleep} hours sleep", "heart rate {hr}", "feeling {mood}"),
    ("woke up after {sleep}h", "resting HR {hr}", "mood {mood}"),
)
_HEALTH_EXTRAS: tuple[tuple[str, ...], ...] = (
    ("{steps} steps", "water {water} glasses", "weight {weight} kg", "bp {sys}/{dia}"),
    ("Steps: {steps}", "Water: {water}", "Weight: {weight} kg", "BP: {sys}/{dia}"),
    ("{steps} steps", "{water} glasses of water", "{weight} kg", "blood pressure {sys}/{dia}"),
    ("walked {steps} steps", "drank {water} glasses", "weighed {weight} kg", "bp {sys}/{dia}"),
)
_HEALTH_SEPS = (", ", " | ", " / ", " ")


def health_body(topic: str, style: UserStyle, r: random.Random) -> str:
    """A health log line in the user's own layout, with a note about ``topic``."""
    fmt = style.health_format
    values = {
        "sleep": fmt_decimal(min(10.0, max(3.5, r.gauss(style.sleep_hours, 0.8))), style),
        "hr": str(style.resting_hr + randint(r, -4, 4)),
        "mood": pick(r, vocab.MOODS),
        "steps": str(randint(r, 1500, 15990, 10)),
        "water": str(randint(r, 3, 10)),
        "weight": fmt_decimal(style.weight_kg + r.uniform(-0.8, 0.8), style),
        "sys": str(randint(r, 108, 138)),
        "dia": str(randint(r, 68, 88)),
    }
    pieces = [p.format_map(values) for p in _HEALTH_CORE[fmt]]
    extras = list(_HEALTH_EXTRAS[fmt])
    for _ in range(randint(r, 0, 2)):
        pieces.append(extras.pop(randint(r, 0, len(extras) - 1)).format_map(values))
    if r.random() < 0.7 or _words(" ".join(pieces)) < MIN_WORDS:
        pieces.append(_log_tail(topic, style, r))
    return _log(pieces, fmt == 3, _HEALTH_SEPS[fmt])


# (noun, past tense, km range, minutes-per-km range)
_DISTANCE_ACTIVITIES: dict[str, tuple[str, str, tuple[float, float], tuple[float, float]]] = {
    "run": ("run", "ran", (3.0, 15.0), (4.6, 7.0)),
    "walk": ("walk", "walked", (2.0, 9.0), (10.0, 14.0)),
    "cycle": ("ride", "cycled", (8.0, 45.0), (2.0, 3.6)),
    "swim": ("swim", "swam", (0.5, 3.0), (18.0, 30.0)),
    "hike": ("hike", "hiked", (5.0, 20.0), (12.0, 20.0)),
}
_EXERCISES = (
    "squats", "deadlifts", "bench press", "rows", "lunges", "pull ups", "overhead press", "curls",
)  # fmt: skip


def _distance_activity(kind: str, style: UserStyle, r: random.Random) -> str:
    noun, past, (lo, hi), (pace_lo, pace_hi) = _DISTANCE_ACTIVITIES[kind]
    km = r.uniform(lo, hi)
    total = km * r.uniform(pace_lo, pace_hi)
    minutes = int(total)
    seconds = int((total - minutes) * 60)
    dist, unit = fmt_distance(km, style)
    hr = style.resting_hr + randint(r, 55, 95)
    fmt = style.activity_format
    if fmt == 0:
        return f"{past} {dist} {unit} in {minutes} min"
    if fmt == 1:
        return f"{noun} - {dist}{unit} - {minutes}:{seconds:02d}"
    if fmt == 2:
        return f"{dist} {unit} {noun} today, took {minutes} minutes"
    return f"Activity: {noun}, distance {dist} {unit}, time {minutes} min, avg hr {hr}"


def _other_activity(kind: str, style: UserStyle, r: random.Random) -> str:
    fmt = style.activity_format
    minutes = randint(r, 20, 90, 5)
    hr = style.resting_hr + randint(r, 30, 70)
    if kind == "gym":
        ex = pick(r, _EXERCISES)
        sets, reps = randint(r, 3, 5), pick(r, (5, 6, 8, 10, 12))
        kg = fmt_decimal(pick(r, (20, 30, 40, 50, 60, 70, 80, 100)) + pick(r, (0, 2.5)), style)
        return (
            f"gym: {ex} {sets}x{reps} @ {kg}kg",
            f"gym - {ex} - {sets}x{reps} - {kg}kg",
            f"{ex} {sets} sets of {reps} at {kg} kg today",
            f"Activity: strength, {ex} {sets}x{reps} at {kg} kg, time {minutes} min",
        )[fmt]
    if kind == "yoga":
        return (
            f"yoga {minutes} min",
            f"yoga - {minutes}:00",
            f"{minutes} minutes of yoga today",
            f"Activity: yoga, time {minutes} min, avg hr {hr}",
        )[fmt]
    steps = randint(r, 3000, 21990, 10)
    dist, unit = fmt_distance(steps * 0.00075, style)
    return (
        f"{steps} steps today",
        f"steps - {steps}",
        f"{steps} steps today, {dist} {unit} walked",
        f"Activity: walking, steps {steps}, distance {dist} {unit}",
    )[fmt]


_ACTIVITY_SEPS = (", ", " - ", ", ", ", ")


def activity_body(topic: str, style: UserStyle, r: random.Random) -> str:
    """An activity log in the user's layout, mostly of their favourite activities."""
    kind = draw_weighted(r, list(accumulate(style.activity_weights)), ACTIVITY_TYPES)
    first = (
        _distance_activity(kind, style, r)
        if kind in _DISTANCE_ACTIVITIES
        else _other_activity(kind, style, r)
    )
    pieces = [first]
    if r.random() < 0.4:
        pieces.append(f"felt {pick(r, vocab.VOCAB['fitness'].adjectives)}")
    if r.random() < 0.7 or _words(" ".join(pieces)) < MIN_WORDS:
        pieces.append(_log_tail(topic, style, r))
    while _words(" ".join(pieces)) < MIN_WORDS:
        pieces.append(_log_tail(topic, style, r))
    return _ACTIVITY_SEPS[style.activity_format].join(pieces)


def encyclopedic_body(topic: str, style: UserStyle, r: random.Random) -> str:
    """One to three plain, encyclopedia-like sentences about ``topic`` (generic corpus)."""
    sentences: list[str] = []
    n = randint(r, 1, 3)
    v = vocab.VOCAB[topic]
    while len(sentences) < n or _words(" ".join(sentences)) < MIN_WORDS:
        if r.random() < 0.2:
            sentences.append(pick(r, v.facts))
        else:
            sentences.append(_fill(pick(r, ENCYCLOPEDIC_TEMPLATES), Slots(topic, style, r)))
    return " ".join(sentences)


BODY_BUILDERS: dict[str, Callable[[str, UserStyle, random.Random], str]] = {
    "message": message_body,
    "note": note_body,
    "health": health_body,
    "activity": activity_body,
    "encyclopedic": encyclopedic_body,
}
"""Text kind -> builder(topic, style, rng) of its neutral body."""
