"""The unit of private text every part of :mod:`fedlora.data` passes around.

One frozen record type (and the fixed topic/kind vocabularies) lives here, apart from the
generator, so that partitioners, splits and the file loader can share it without depending on
how synthetic text is made.
"""

from __future__ import annotations

from dataclasses import dataclass

TOPICS: tuple[str, ...] = (
    "family",
    "work",
    "fitness",
    "health",
    "food",
    "travel",
    "finance",
    "hobbies",
)
"""Topics of synthetic text, in the fixed order that ``UserProfile.topic_mix`` follows."""

KINDS: tuple[str, ...] = ("message", "note", "health", "activity")
"""Kinds of user-written text, in the fixed order that ``UserProfile.kind_mix`` follows."""

SYSTEM_KIND = "system"
"""Kind of automated messages (codes, missed calls, ...) mixed into a user's raw data."""

SYSTEM_TOPIC = "system"
"""Topic label of automated messages: they belong to no user topic."""

UNKNOWN_TOPIC = "unknown"
"""Topic of user-supplied text that carries no topic label."""


@dataclass(frozen=True)
class Example:
    """One piece of text written on (or arriving at) one phone."""

    text: str
    topic: str
    kind: str
    user_id: str
