"""Private text → token ids, without torch.

Each example becomes ``<s> text </s>``, truncated to ``max_len`` tokens
(:func:`tokenize_texts`); batching and padding into tensors is
:mod:`fedlora.client.text_batches`' job.

This module imports neither torch nor transformers, so a phone whose training happens
elsewhere — a simulated phone whose round the vectorized service trains — can prepare its
round in a process that never loads them (they cost ≈ 8 s of CPU to import).
:class:`PortableTokenizer` is what makes that possible: the Hugging Face *fast* tokenizer's
Rust core (``tokenizers.Tokenizer``) serialised to its JSON form plus the special-token ids,
rebuilt with the ``tokenizers`` package alone. It produces the same ids as the tokenizer it
came from for :func:`tokenize_texts`' call (``add_special_tokens=False``; the special tokens
are added here), which ``tests/test_client_tokens.py`` checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TokenizedTexts:
    """Token id lists of a set of examples (no padding yet)."""

    ids: tuple[tuple[int, ...], ...]
    pad_id: int

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_tokens(self) -> int:
        return sum(len(x) for x in self.ids)


def tokenize_texts(tokenizer: Any, texts: Sequence[str], max_len: int) -> TokenizedTexts:
    """``<s> text </s>`` ids per text, truncated to ``max_len``; ``tokenizer`` is a Hugging
    Face tokenizer or a :class:`PortableTokenizer` (anything with ``bos_token_id``,
    ``eos_token_id``, ``pad_token_id`` and ``__call__(texts, add_special_tokens=False)``)."""
    if not texts:
        raise ValueError("no texts to tokenize: the phone has no usable examples")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    rows: list[tuple[int, ...]] = []
    for enc in encoded:
        seq = ([bos] if bos is not None else []) + list(enc) + ([eos] if eos is not None else [])
        rows.append(tuple(seq[:max_len]))
    return TokenizedTexts(ids=tuple(rows), pad_id=int(pad))


@dataclass(frozen=True)
class PortableTokenizer:
    """A fast tokenizer as plain data: its ``tokenizers`` JSON and special-token ids.

    Picklable and small (the default model's is ≈ 100 KB); :meth:`__call__` mirrors the
    Hugging Face call :func:`tokenize_texts` makes.
    """

    tokenizer_json: str
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None

    @classmethod
    def of(cls, hf_tokenizer: Any) -> PortableTokenizer | None:
        """The portable form of a Hugging Face tokenizer; None for a slow (Python)
        tokenizer, which has no Rust core to serialise."""
        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        return cls(
            tokenizer_json=backend.to_str(),
            bos_token_id=hf_tokenizer.bos_token_id,
            eos_token_id=hf_tokenizer.eos_token_id,
            pad_token_id=hf_tokenizer.pad_token_id,
        )

    def __call__(self, texts: Sequence[str], add_special_tokens: bool = False) -> dict[str, Any]:
        encodings = _rust_tokenizer(self.tokenizer_json).encode_batch(
            list(texts), add_special_tokens=add_special_tokens
        )
        return {"input_ids": [e.ids for e in encodings]}


_RUST_TOKENIZERS: dict[str, Any] = {}
"""Explicit cache: parsed ``tokenizers.Tokenizer`` per JSON (a process sees one or two)."""


def _rust_tokenizer(tokenizer_json: str) -> Any:
    tok = _RUST_TOKENIZERS.get(tokenizer_json)
    if tok is None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_str(tokenizer_json)
        tok.no_truncation()  # as the Hugging Face call: truncation happens in tokenize_texts
        tok.no_padding()
        _RUST_TOKENIZERS[tokenizer_json] = tok
    return tok
