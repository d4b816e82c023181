"""User-supplied client data: one file per client in a directory.

Operators bring their own text as ``<client_id>.jsonl`` (one JSON object per line with a
``"text"`` field and optional ``"topic"``/``"kind"``) or ``<client_id>.txt`` (one example per
non-empty line). Bad input fails loudly with the file and line number, because a silently
skipped line in a federated run is an unexplained change in one client's data.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedlora.data.example import UNKNOWN_TOPIC, Example
from fedlora.errors import FedloraError

SUPPORTED_SUFFIXES: tuple[str, ...] = (".jsonl", ".txt")
DEFAULT_KIND = "message"
_CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class ClientDataError(FedloraError, ValueError):
    """A client data file (or directory) cannot be used; names the file and line."""

    def __init__(self, path: str | os.PathLike[str], reason: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {reason}")


def check_client_id(client_id: str) -> None:
    """Client ids become file names: letters, digits, ``.``, ``_``, ``-``; no leading dot."""
    if not _CLIENT_ID.match(client_id) or client_id.endswith(SUPPORTED_SUFFIXES):
        raise ValueError(
            f"invalid client id {client_id!r}: use letters, digits, '.', '_' or '-' "
            "and start with a letter or digit"
        )


def _read_lines(path: Path) -> list[str]:
    # split("\n") rather than splitlines(): the latter also breaks at U+2028 and friends,
    # which json.dumps leaves unescaped inside strings.
    try:
        return path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise ClientDataError(path, f"not valid UTF-8 ({err.reason} at byte {err.start})") from err


def _load_jsonl(path: Path, client_id: str) -> list[Example]:
    examples: list[Example] = []
    for lineno, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ClientDataError(path, f"malformed JSON: {err.msg}", lineno) from err
        if not isinstance(record, dict):
            raise ClientDataError(
                path, f"expected a JSON object, got {type(record).__name__}", lineno
            )
        if "text" not in record:
            raise ClientDataError(path, 'missing required field "text"', lineno)
        text = record["text"]
        if not isinstance(text, str) or not text.strip():
            raise ClientDataError(path, '"text" must be a non-empty string', lineno)
        fields: dict[str, str] = {}
        for key, default in (("topic", UNKNOWN_TOPIC), ("kind", DEFAULT_KIND)):
            value = record.get(key, default)
            if not isinstance(value, str):
                raise ClientDataError(path, f'"{key}" must be a string if given', lineno)
            fields[key] = value
        examples.append(Example(text, fields["topic"], fields["kind"], client_id))
    return examples


def _load_txt(path: Path, client_id: str) -> list[Example]:
    return [
        Example(line.strip(), UNKNOWN_TOPIC, DEFAULT_KIND, client_id)
        for line in _read_lines(path)
        if line.strip()
    ]


def load_client_examples(path: str | os.PathLike[str]) -> dict[str, list[Example]]:
    """Every client's examples (topic/kind kept where given), sorted by client id.

    Hidden files (``.DS_Store``, ...) are ignored; anything else that is not a
    ``.jsonl``/``.txt`` file, a client with two files, or a file with no example is an error.
    """
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"client data directory {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"client data path {root} is not a directory")
    clients: dict[str, list[Example]] = {}
    sources: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_file() or entry.suffix not in SUPPORTED_SUFFIXES:
            raise ClientDataError(
                entry,
                "unsupported entry: expected <client_id>.jsonl or <client_id>.txt files only",
            )
        client_id = entry.stem
        try:
            check_client_id(client_id)
        except ValueError as err:
            raise ClientDataError(entry, str(err)) from err
        if client_id in sources:
            raise ClientDataError(
                entry, f"client {client_id!r} already has data in {sources[client_id].name}"
            )
        loaded = (
            _load_jsonl(entry, client_id)
            if entry.suffix == ".jsonl"
            else _load_txt(entry, client_id)
        )
        if not loaded:
            raise ClientDataError(entry, "contains no examples")
        sources[client_id] = entry
        clients[client_id] = loaded
    if not clients:
        raise ClientDataError(
            root, "empty directory: expected one <client_id>.jsonl or <client_id>.txt per client"
        )
    return {cid: clients[cid] for cid in sorted(clients)}


def load_client_dir(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """Every client's texts, sorted by client id (see :func:`load_client_examples`)."""
    return {cid: [e.text for e in examples] for cid, examples in load_client_examples(path).items()}


def write_client_dir(
    path: str | os.PathLike[str],
    clients: Mapping[str, Sequence[Example]],
    overwrite: bool = False,
) -> list[Path]:
    """Write one ``<client_id>.jsonl`` (text/topic/kind per line) per client; returns paths.

    Existing client files are only replaced with ``overwrite=True``. What is written loads
    back unchanged with :func:`load_client_examples` (the writer becomes ``user_id``).
    """
    root = Path(path)
    for client_id, examples in clients.items():
        check_client_id(client_id)
        if not examples:
            raise ValueError(f"client {client_id!r} has no examples; the loader would reject it")
        for i, e in enumerate(examples):
            if not e.text.strip():
                raise ValueError(f"client {client_id!r} example {i} has empty text")
        target = root / f"{client_id}.jsonl"
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists; pass overwrite=True to replace it")
    root.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for client_id in sorted(clients):
        target = root / f"{client_id}.jsonl"
        lines = [
            json.dumps({"text": e.text, "topic": e.topic, "kind": e.kind}, ensure_ascii=False)
            for e in clients[client_id]
        ]
        target.write_text("\n".join(lines) + "\n", encoding="utf-8")
        written.append(target)
    return written
