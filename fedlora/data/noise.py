"""Automated messages and duplicates that real phone data is full of.

A user's raw text is not all theirs: verification codes, missed-call notices, "Message deleted"
placeholders and resent duplicates creep in. The generator mixes such noise in at a chosen
rate so that the on-device filter has something realistic to remove. Automated messages carry
``kind="system"``; a duplicate is an exact copy of an earlier example (same kind and topic),
because on a phone a resent message looks exactly like the original.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from fedlora.data.example import SYSTEM_KIND, SYSTEM_TOPIC, Example
from fedlora.data.seeding import pick, randint

DUPLICATE_SHARE = 0.3
"""Share of noise events that repeat an earlier example instead of adding a system message."""

_APPS = ("WhatsApp", "Google", "Amazon", "PayPal", "Uber", "Microsoft", "Signal", "Bank")
_CARRIER_MESSAGES = (
    "Message deleted",
    "This message was deleted",
    "<Media omitted>",
    "[Image]",
    "[Voice note 0:{ss2}]",
    "Your package has been delivered",
    "You have 1 new voicemail",
    "Low battery: {pct}% remaining",
    "Your monthly statement is ready",
    "Missed call from +1 555 01{d2}",
    "Missed call (2) from +44 7700 900{d3}",
    "Your verification code is {d6}",
    "{app} code: {d6}. Do not share it with anyone.",
    "{d6} is your {app} security code",
    "Reminder: your appointment is on {day}/{month} at {hh}:{mm}",
    "Call ended {hh2}:{ss}",
    "Your data plan is 80% used",
    "Welcome to the network. Roaming charges may apply.",
)


def system_text(r: random.Random) -> str:
    """One automated message, with random codes, numbers and dates filled in."""
    values = {
        "d2": f"{randint(r, 0, 99):02d}",
        "d3": f"{randint(r, 0, 999):03d}",
        "d6": f"{randint(r, 0, 999_999):06d}",
        "pct": str(pick(r, (5, 10, 15, 20))),
        "app": pick(r, _APPS),
        "day": str(randint(r, 1, 28)),
        "month": str(randint(r, 1, 12)),
        "hh": f"{randint(r, 8, 18):02d}",
        "mm": pick(r, ("00", "15", "30", "45")),
        "hh2": f"{randint(r, 0, 59):02d}",
        "ss": f"{randint(r, 0, 59):02d}",
        "ss2": f"{randint(r, 1, 59):02d}",
    }
    return pick(r, _CARRIER_MESSAGES).format_map(values)


def inject_noise(examples: Sequence[Example], noise_rate: float, r: random.Random) -> list[Example]:
    """Replace each example, with probability ``noise_rate``, by a system message or duplicate.

    The length is kept. Duplicates copy an earlier clean example of the output, so a filter
    that drops repeats and ``kind="system"`` texts recovers only genuine user text.
    """
    if not 0.0 <= noise_rate < 1.0:
        raise ValueError(f"noise_rate must be in [0, 1), got {noise_rate}")
    out: list[Example] = []
    clean: list[Example] = []
    for example in examples:
        if noise_rate > 0.0 and r.random() < noise_rate:
            if clean and r.random() < DUPLICATE_SHARE:
                out.append(pick(r, clean))
            else:
                out.append(Example(system_text(r), SYSTEM_TOPIC, SYSTEM_KIND, example.user_id))
            continue
        out.append(example)
        clean.append(example)
    return out
