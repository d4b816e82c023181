"""What a phone's round needs to know about the frozen base, without holding the base.

A round tokenizes its texts and reports which base it trained on (backend, compute dtype,
quantization); only training itself needs the weights. On a real phone both come from the
base it loaded (:attr:`fedlora.client.model_loading.LoadedBase.facts`). A simulated phone
whose training runs in the vectorized service gets them from the service instead — the
tokenizer as a :class:`~fedlora.client.tokens.PortableTokenizer` — so its process never
imports torch, transformers or peft.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class BaseFacts:
    """The base as a round sees it: tokenizer and identity, no weights.

    ``tokenizer``: a Hugging Face tokenizer or a :class:`~fedlora.client.tokens.PortableTokenizer`
    (what :func:`~fedlora.client.tokens.tokenize_texts` takes); ``quantization`` includes
    ``+dq`` for double quantization, as in a :class:`~fedlora.protocol.PhoneReport`.
    """

    tokenizer: Any
    fingerprint: str
    backend: str
    dtype: str
    quantization: str

    def report_fields(self) -> dict[str, str]:
        """The :class:`~fedlora.protocol.PhoneReport` fields that describe the base."""
        return {"backend": self.backend, "dtype": self.dtype, "quantization": self.quantization}
