"""Per-user writing style: what makes one phone's text recognisably its owner's.

A federated LoRA adapter is only worth training if a user's text is predictable from the user:
the same greeting and sign-off, favourite catchphrases, lowercase or not, abbreviations
("u", "tmrw"), punctuation habits ("!!!", "..."), emoji, friends' and pets' names, number
formats and log layouts. :class:`UserStyle` fixes those choices once per user, and
:func:`stylize` applies them to neutral text, so styles are strong, consistent within a user and
different between users. :func:`neutral_style` is the style-free counterpart used for the
generic pretraining corpus.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace

import numpy as np

from fedlora.data import vocab
from fedlora.data.seeding import pick, randint

PUNCTUATION_HABITS: tuple[str, ...] = ("plain", "excited", "trailing", "none", "double")
"""How a user ends sentences: as written, "!"/"!!!", "...", nothing, or doubled "!!"/"??"."""

NUM_HEALTH_FORMATS = 4
NUM_ACTIVITY_FORMATS = 4
ACTIVITY_TYPES: tuple[str, ...] = ("run", "walk", "cycle", "swim", "hike", "gym", "yoga", "steps")


@dataclass(frozen=True)
class UserStyle:
    """Fixed writing habits of one user; rates are per-text probabilities."""

    greeting: str = ""
    greeting_rate: float = 0.0
    sign_off: str = ""
    sign_off_rate: float = 0.0
    catchphrases: tuple[str, ...] = ()
    catchphrase_rate: float = 0.0
    filler: str = ""
    filler_rate: float = 0.0
    emojis: tuple[str, ...] = ()
    emoji_rate: float = 0.0
    lowercase: bool = False
    punctuation: str = "plain"
    abbreviations: tuple[tuple[str, str], ...] = ()
    friends: tuple[str, ...] = ()
    friend_rate: float = 0.0
    pet: str = ""
    pet_kind: str = ""
    note_prefix: str = "note:"
    list_sep: str = ", "
    decimal_comma: bool = False
    clock_24h: bool = True
    miles: bool = False
    health_format: int = 0
    activity_format: int = 0
    activity_weights: tuple[float, ...] = tuple(1.0 / len(ACTIVITY_TYPES) for _ in ACTIVITY_TYPES)
    resting_hr: int = 62
    weight_kg: float = 70.0
    sleep_hours: float = 7.0

    def __post_init__(self) -> None:
        if self.punctuation not in PUNCTUATION_HABITS:
            raise ValueError(
                f"punctuation must be one of {PUNCTUATION_HABITS}, got {self.punctuation!r}"
            )
        if len(self.activity_weights) != len(ACTIVITY_TYPES):
            raise ValueError(
                f"activity_weights needs {len(ACTIVITY_TYPES)} entries "
                f"({', '.join(ACTIVITY_TYPES)}), got {len(self.activity_weights)}"
            )
        if not 0 <= self.health_format < NUM_HEALTH_FORMATS:
            raise ValueError(f"health_format must be in [0, {NUM_HEALTH_FORMATS})")
        if not 0 <= self.activity_format < NUM_ACTIVITY_FORMATS:
            raise ValueError(f"activity_format must be in [0, {NUM_ACTIVITY_FORMATS})")


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _pick_distinct(rng: np.random.Generator, options: tuple[str, ...], k: int) -> tuple[str, ...]:
    idx = rng.choice(len(options), size=k, replace=False)
    return tuple(options[int(i)] for i in idx)


def sample_style(rng: np.random.Generator) -> UserStyle:
    """Draw one user's style; every habit is fixed here and reused for all their text."""
    abbreviate = bool(rng.random() < 0.5)
    abbreviations = (
        tuple(pair for pair in vocab.ABBREVIATIONS if rng.random() < 0.7) if abbreviate else ()
    )
    uses_emoji = bool(rng.random() < 0.8)
    weights = rng.dirichlet(np.full(len(ACTIVITY_TYPES), 0.7))
    return UserStyle(
        greeting=_pick(rng, vocab.GREETINGS),
        greeting_rate=float(rng.uniform(0.6, 0.95)),
        sign_off=_pick(rng, vocab.SIGN_OFFS),
        sign_off_rate=float(rng.uniform(0.4, 0.9)),
        catchphrases=_pick_distinct(rng, vocab.CATCHPHRASES, int(rng.integers(2, 4))),
        catchphrase_rate=float(rng.uniform(0.3, 0.7)),
        filler=_pick(rng, vocab.FILLERS),
        filler_rate=float(rng.uniform(0.2, 0.6)),
        emojis=_pick_distinct(rng, vocab.EMOJIS, int(rng.integers(1, 3))) if uses_emoji else (),
        emoji_rate=float(rng.uniform(0.3, 0.9)) if uses_emoji else 0.0,
        lowercase=bool(rng.random() < 0.45),
        punctuation=_pick(rng, PUNCTUATION_HABITS),
        abbreviations=abbreviations,
        friends=_pick_distinct(rng, vocab.FIRST_NAMES, int(rng.integers(2, 4))),
        friend_rate=float(rng.uniform(0.5, 0.85)),
        pet=_pick(rng, vocab.PET_NAMES),
        pet_kind=_pick(rng, vocab.PETS),
        note_prefix=_pick(rng, vocab.NOTE_PREFIXES),
        list_sep=_pick(rng, vocab.LIST_SEPARATORS),
        decimal_comma=bool(rng.random() < 0.35),
        clock_24h=bool(rng.random() < 0.5),
        miles=bool(rng.random() < 0.25),
        health_format=int(rng.integers(NUM_HEALTH_FORMATS)),
        activity_format=int(rng.integers(NUM_ACTIVITY_FORMATS)),
        activity_weights=tuple(float(w) for w in weights),
        resting_hr=int(rng.integers(50, 80)),
        weight_kg=round(float(rng.uniform(52.0, 98.0)), 1),
        sleep_hours=round(float(rng.uniform(5.5, 8.5)), 1),
    )


NEUTRAL_STYLE = UserStyle()
"""No greeting, sign-off, catchphrase, emoji or abbreviation; capitalised, plain punctuation."""


def neutral_style(r: random.Random) -> UserStyle:
    """A style-free style whose layouts and number formats vary per document.

    The generic corpus should show the base model every log layout and number format, but
    never tie any of them to a person: only the LoRA should learn which one a user prefers.
    """
    return replace(
        NEUTRAL_STYLE,
        note_prefix=pick(r, vocab.NOTE_PREFIXES),
        list_sep=pick(r, vocab.LIST_SEPARATORS),
        decimal_comma=r.random() < 0.3,
        clock_24h=r.random() < 0.5,
        miles=r.random() < 0.2,
        health_format=randint(r, 0, NUM_HEALTH_FORMATS - 1),
        activity_format=randint(r, 0, NUM_ACTIVITY_FORMATS - 1),
        resting_hr=randint(r, 50, 79),
        weight_kg=round(r.uniform(52.0, 98.0), 1),
        sleep_hours=round(r.uniform(5.5, 8.5), 1),
    )


# ---- number formats --------------------------------------------------------------------


def fmt_decimal(value: float, style: UserStyle, decimals: int = 1) -> str:
    """``6.5`` or ``6,5`` depending on the user's decimal mark."""
    text = f"{value:.{decimals}f}"
    return text.replace(".", ",") if style.decimal_comma else text


def fmt_clock(hour: int, minute: int, style: UserStyle) -> str:
    """``18:30`` for 24-hour users, ``6:30pm`` / ``6pm`` for 12-hour users."""
    if style.clock_24h:
        return f"{hour:02d}:{minute:02d}"
    suffix = "am" if hour < 12 else "pm"
    h12 = hour % 12 or 12
    return f"{h12}{suffix}" if minute == 0 else f"{h12}:{minute:02d}{suffix}"


def fmt_distance(km: float, style: UserStyle) -> tuple[str, str]:
    """(value, unit) in the user's unit: kilometres or miles."""
    if style.miles:
        return fmt_decimal(km / 1.609344, style), "mi"
    return fmt_decimal(km, style), "km"


# ---- applying a style to neutral text ---------------------------------------------------

_PROPER_WORDS = frozenset(
    (*vocab.FIRST_NAMES, *vocab.PET_NAMES, *vocab.DAYS, "I", "GP", "HDMI", "HR", "Sunday")
)
_SENTENCE_END = re.compile(r"(?<=[A-Za-z0-9)'])([.!?]+)(?=\s|$)")
_PUNCT_MAPS: dict[str, dict[str, str]] = {
    "plain": {},
    "excited": {".": "!", "!": "!!!", "?": "?!"},
    "trailing": {".": "...", "!": "!", "?": "?"},
    "none": {".": "", "!": ""},
    "double": {"!": "!!", "?": "??"},
}


def decapitalize(text: str) -> str:
    """Lower the first letter unless the text starts with a name or "I"."""
    if not text:
        return text
    first = text.split(" ", 1)[0].rstrip(",.!?:")
    first = first.removesuffix("'s")
    if first in _PROPER_WORDS or text.startswith(("I ", "I'")):
        return text
    return text[0].lower() + text[1:]


def capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]


def _longest(word: str) -> tuple[int, str]:
    return (-len(word), word)


_ABBREVIABLE = re.compile(
    r"\b("
    + "|".join(re.escape(w) for w in sorted({w for w, _ in vocab.ABBREVIATIONS}, key=_longest))
    + r")\b",
    re.IGNORECASE,
)


def abbreviate(text: str, pairs: tuple[tuple[str, str], ...]) -> str:
    """Replace whole words by the user's abbreviations ("tomorrow" -> "tmrw").

    Only words listed in :data:`fedlora.data.vocab.ABBREVIATIONS` can be abbreviated.
    """
    if not pairs:
        return text
    table = dict(pairs)

    def sub(m: re.Match[str]) -> str:
        word = m.group(1)
        return table.get(word.lower(), word)

    return _ABBREVIABLE.sub(sub, text)


def punctuate(text: str, habit: str) -> str:
    """Rewrite sentence-final punctuation according to the user's habit."""
    table = _PUNCT_MAPS[habit]
    if not table:
        return text

    def sub(m: re.Match[str]) -> str:
        run = m.group(1)
        return table.get(run, run)  # keys are single marks: "?!" or "..." stay as written

    return _SENTENCE_END.sub(sub, text)


def stylize(body: str, style: UserStyle, kind: str, r: random.Random) -> str:
    """Dress neutral ``body`` text in ``style``; ``r`` decides the per-text choices."""
    parts: list[str] = []
    if kind == "message":
        if style.filler and r.random() < style.filler_rate:
            body = f"{style.filler} {decapitalize(body)}"
        if style.greeting and r.random() < style.greeting_rate:
            parts.append(style.greeting)
        parts.append(body)
        if style.catchphrases and r.random() < style.catchphrase_rate:
            parts.append(pick(r, style.catchphrases))
        if style.sign_off and r.random() < style.sign_off_rate:
            parts.append(style.sign_off)
    else:
        parts.append(body)
        if style.catchphrases and r.random() < style.catchphrase_rate / 2:
            if body[-1:].isalnum():
                parts[-1] = body + "."
            parts.append(pick(r, style.catchphrases))
    text = " ".join(parts)
    text = abbreviate(text, style.abbreviations)
    text = punctuate(text, style.punctuation)
    if style.lowercase:
        text = text.lower()
    if style.emojis and r.random() < style.emoji_rate:
        text = f"{text} {pick(r, style.emojis)}"
    return text
