"""Exceptions shared by every side.

Failures in fedlora are loud and specific: each error names the thing that is wrong (a
tensor, a config key, a client) so that an operator can act on the message alone.
"""

from __future__ import annotations


class FedloraError(Exception):
    """Base class of every error fedlora raises on purpose."""


class AdapterValidationError(FedloraError, ValueError):
    """An adapter (or delta) does not fit what it is checked against.

    `tensor` names the offending tensor or module so the message is actionable.
    """

    def __init__(self, tensor: str, reason: str) -> None:
        self.tensor = tensor
        self.reason = reason
        super().__init__(f"adapter tensor {tensor!r}: {reason}")


class ConfigError(FedloraError, ValueError):
    """A configuration value is missing, of the wrong type or out of its allowed range."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        joined = "\n  ".join(problems)
        super().__init__(f"invalid configuration:\n  {joined}")


class ModelSourceError(FedloraError, FileNotFoundError):
    """A base model could not be resolved from a path, hub id or the embedded default."""
