"""fedlora's native-client reference: the whole phone side of a round without ``fedlora``.

A native app (Kotlin, Swift, C++) cannot import fedlora; it speaks the hub's HTTP API and
runs an ExecuTorch program. This package does exactly that in plain Python so that the
contract is executable and tested against a real hub:

* :mod:`.hub` — HTTPS GET with the deployment's CA pinned, ETags;
* :mod:`.verify` — Ed25519 signature check against pinned keys, before anything is parsed
  into a model;
* :mod:`.adapter` — the safetensors adapter (tensors + fedlora metadata) as NumPy;
* :mod:`.delta` — ``trained − received``, the flat layout the server sums in, L2 clipping,
  and the delta encoded in fedlora's blob format;
* :mod:`.pte` — training steps through an exported ``.pte`` (``fedlora client export``) with
  ExecuTorch's training runtime, when ExecuTorch is installed.

Nothing here imports torch except :mod:`.pte`, and only because ExecuTorch's Python
bindings hand tensors over as ``torch.Tensor`` (its C++/Java/Swift runtimes do not).
"""

from fedlora_native.adapter import NativeAdapter, parse_adapter
from fedlora_native.errors import NativeError, Refused
from fedlora_native.hub import Download, NativeHubClient
from fedlora_native.verify import VerifiedAdapter, verify_download

__all__ = [
    "Download",
    "NativeAdapter",
    "NativeError",
    "NativeHubClient",
    "Refused",
    "VerifiedAdapter",
    "parse_adapter",
    "verify_download",
]

__version__ = "0.1.0"
