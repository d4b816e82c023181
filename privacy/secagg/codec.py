"""A strict, compact binary encoding of the protocol messages.

Used by the Flower transport (inside a ``ConfigRecord`` bytes value), for counting bytes
on the wire, and for the transcript tests (everything the server receives, serialized).
Layout: magic ``FSA1`` ‖ type tag (u8) ‖ fields; integers big-endian, byte strings and
lists length-prefixed, the masked vector as little-endian words. Decoding checks every
length and refuses trailing bytes; any problem is a :class:`CodecError`. The sender of a
client message is *not* encoded: the transport supplies it from authenticated metadata.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from .errors import SecAggParamsError
from .messages import (
    AdvertiseKeys,
    AdvertiseKeysRequest,
    ClientMessage,
    MaskedInput,
    MaskedInputRequest,
    ServerMessage,
    ShareKeys,
    ShareKeysRequest,
    Unmask,
    UnmaskRequest,
)
from .params import SecAggParams

MAGIC = b"FSA1"
MAX_ENTRIES = 1 << 20
MAX_BLOB = 1 << 16
MAX_VECTOR = 1 << 31

_TAGS: dict[type, int] = {
    AdvertiseKeysRequest: 1,
    ShareKeysRequest: 2,
    MaskedInputRequest: 3,
    UnmaskRequest: 4,
    AdvertiseKeys: 11,
    ShareKeys: 12,
    MaskedInput: 13,
    Unmask: 14,
}


class CodecError(ValueError):
    """Bytes that are not a well-formed protocol message."""


class _Writer:
    def __init__(self, tag: int) -> None:
        self.parts: list[bytes] = [MAGIC, bytes([tag])]

    def u8(self, v: int) -> None:
        self.parts.append(struct.pack(">B", v))

    def u32(self, v: int) -> None:
        self.parts.append(struct.pack(">I", v))

    def u64(self, v: int) -> None:
        self.parts.append(struct.pack(">Q", v))

    def blob(self, b: bytes) -> None:
        self.u32(len(b))
        self.parts.append(bytes(b))

    def ids(self, ids: Sequence[int]) -> None:
        self.u32(len(ids))
        self.parts.append(np.asarray(list(ids), dtype=">u8").tobytes())

    def blob_map(self, m: Mapping[int, bytes]) -> None:
        self.u32(len(m))
        for k in sorted(m):
            self.u64(k)
            self.blob(m[k])

    def done(self) -> bytes:
        return b"".join(self.parts)


class _Reader:
    def __init__(self, data: bytes) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise CodecError(f"expected bytes, got {type(data).__name__}")
        self.data = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise CodecError("message truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return int(self.take(1)[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def count(self) -> int:
        n = self.u32()
        if n > MAX_ENTRIES:
            raise CodecError(f"list of {n} entries exceeds {MAX_ENTRIES}")
        return n

    def blob(self) -> bytes:
        n = self.u32()
        if n > MAX_BLOB:
            raise CodecError(f"byte string of {n} bytes exceeds {MAX_BLOB}")
        return bytes(self.take(n))

    def ids(self) -> tuple[int, ...]:
        n = self.count()
        return tuple(int(v) for v in np.frombuffer(self.take(8 * n), dtype=">u8"))

    def blob_map(self) -> dict[int, bytes]:
        n = self.count()
        out: dict[int, bytes] = {}
        for _ in range(n):
            k = self.u64()
            if k in out:
                raise CodecError(f"id {k} appears twice")
            out[k] = self.blob()
        return out

    def end(self) -> None:
        if self.pos != len(self.data):
            raise CodecError(f"{len(self.data) - self.pos} trailing bytes")


def encode(msg: ServerMessage | ClientMessage) -> bytes:
    """Message → bytes (the sender of a client message is not included)."""
    w = _Writer(_TAGS[type(msg)])
    if isinstance(msg, AdvertiseKeysRequest):
        p = msg.params
        w.u64(p.round_id)
        w.ids(p.participants)
        w.u32(p.degree)
        w.u32(p.threshold)
        w.u8(p.bits)
        w.u64(p.vector_len)
        w.u64(p.coordinate_bound)
        w.blob(p.round_seed)
    elif isinstance(msg, ShareKeysRequest):
        w.u64(msg.round_id)
        w.u32(len(msg.public_keys))
        for v in sorted(msg.public_keys):
            w.u64(v)
            w.blob(msg.public_keys[v][0])
            w.blob(msg.public_keys[v][1])
    elif isinstance(msg, MaskedInputRequest | ShareKeys):
        w.u64(msg.round_id)
        w.blob_map(msg.ciphertexts)
    elif isinstance(msg, UnmaskRequest):
        w.u64(msg.round_id)
        w.ids(msg.survivors)
        w.ids(msg.dropped)
    elif isinstance(msg, AdvertiseKeys):
        w.u64(msg.round_id)
        w.blob(msg.c_pk)
        w.blob(msg.s_pk)
    elif isinstance(msg, MaskedInput):
        w.u64(msg.round_id)
        w.ids(msg.bad_ciphertexts)
        arr = np.asarray(msg.masked)
        w.u8(arr.dtype.itemsize)
        w.u64(arr.shape[0] if arr.ndim == 1 else 0)
        w.parts.append(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    elif isinstance(msg, Unmask):
        w.u64(msg.round_id)
        w.blob_map(msg.b_shares)
        w.blob_map(msg.s_shares)
    return w.done()


def _header(r: _Reader) -> int:
    if bytes(r.take(4)) != MAGIC:
        raise CodecError("not a fedlora secagg message (bad magic)")
    return r.u8()


def decode_server_message(data: bytes) -> ServerMessage:
    """Bytes from the server → request dataclass (phone side)."""
    r = _Reader(data)
    tag = _header(r)
    msg: ServerMessage
    if tag == 1:
        fields = (r.u64(), r.ids(), r.u32(), r.u32(), r.u8(), r.u64(), r.u64(), r.blob())
        try:
            params = SecAggParams(
                round_id=fields[0],
                participants=fields[1],
                degree=fields[2],
                threshold=fields[3],
                bits=fields[4],
                vector_len=fields[5],
                coordinate_bound=fields[6],
                round_seed=fields[7],
            )
        except SecAggParamsError as exc:
            raise CodecError(str(exc)) from exc
        msg = AdvertiseKeysRequest(params=params)
    elif tag == 2:
        round_id = r.u64()
        keys: dict[int, tuple[bytes, bytes]] = {}
        for _ in range(r.count()):
            v = r.u64()
            if v in keys:
                raise CodecError(f"id {v} appears twice")
            keys[v] = (r.blob(), r.blob())
        msg = ShareKeysRequest(round_id=round_id, public_keys=keys)
    elif tag == 3:
        msg = MaskedInputRequest(round_id=r.u64(), ciphertexts=r.blob_map())
    elif tag == 4:
        msg = UnmaskRequest(round_id=r.u64(), survivors=r.ids(), dropped=r.ids())
    else:
        raise CodecError(f"unknown server message type {tag}")
    r.end()
    return msg


def _masked_input(r: _Reader, sender: int) -> MaskedInput:
    round_id, bad = r.u64(), r.ids()
    width, length = r.u8(), r.u64()
    if width not in (4, 8):
        raise CodecError(f"vector word width {width} is not 4 or 8 bytes")
    if length > MAX_VECTOR:
        raise CodecError(f"vector of {length} words is too long")
    raw = r.take(width * length)
    masked = np.frombuffer(raw, dtype=np.dtype(f"<u{width}")).copy()
    return MaskedInput(round_id=round_id, sender=sender, masked=masked, bad_ciphertexts=bad)


def decode_client_message(data: bytes, sender: int) -> ClientMessage:
    """Bytes from client ``sender`` → reply dataclass (server side)."""
    r = _Reader(data)
    tag = _header(r)
    readers: dict[int, Callable[[], ClientMessage]] = {
        11: lambda: AdvertiseKeys(round_id=r.u64(), sender=sender, c_pk=r.blob(), s_pk=r.blob()),
        12: lambda: ShareKeys(round_id=r.u64(), sender=sender, ciphertexts=r.blob_map()),
        13: lambda: _masked_input(r, sender),
        14: lambda: Unmask(
            round_id=r.u64(), sender=sender, b_shares=r.blob_map(), s_shares=r.blob_map()
        ),
    }
    if tag not in readers:
        raise CodecError(f"unknown client message type {tag}")
    msg = readers[tag]()
    r.end()
    return msg
