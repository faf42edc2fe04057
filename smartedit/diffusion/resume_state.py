"""An edit's loop state at a step, as bytes a caller may keep and send back: ``resume_state``.

A checkpoint of a streamed edit (``checkpoint_every``) carries one; a request that sends it back
continues the edit from that step (``smartedit.diffusion.resume``). The bytes come back from outside,
so they are parsed here with ``struct``, ``json`` and ``numpy.frombuffer`` only -- never pickle --
and every length, offset, shape and type is checked before it is used. Layout (little-endian)::

    magic     b"SMARTEDIT-RESUME"                16 bytes
    version   u32                                FORMAT_VERSION
    length    u32                                bytes of the header that follows
    header    UTF-8 JSON                         see ``ResumeState``; its "tensors" table says where each
                                                 tensor lies in the payload: name, dtype, shape, offset
    payload   the tensors' raw bytes, C order, little-endian, one after another
    digest    32 bytes                           SHA-256 of everything before it

The digest catches a state that was truncated or changed in transit; it is no signature, and none is
needed: whatever a state holds, it is checked as a request's input is (shapes against the edit's own,
types against an allowlist) and can only spoil the edit of the caller who sent it.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from smartedit.errors import RequestError

FIELD = "resume_state"
MAGIC = b"SMARTEDIT-RESUME"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<16sII")  # magic, version, header length
DIGEST_BYTES = 32
MAX_HEADER_BYTES = 1 << 20
MAX_TENSORS = 4096
MAX_DIMS = 8
# The dtypes a state may hold: the loop's latents and the samplers' tensors (float32, the int64 timesteps
# UniPC lists), the generator's state (uint8).
DTYPES = {"float32": torch.float32, "float64": torch.float64, "int64": torch.int64, "int32": torch.int32,
          "uint8": torch.uint8, "bool": torch.bool}


class ResumeStateError(RequestError):
    """A ``resume_state`` this server cannot use; INVALID_ARGUMENT naming the field."""

    def __init__(self, message: str):
        super().__init__(FIELD, message)


@dataclass
class ResumeState:
    """What a checkpoint holds.

    Attributes:
        header: JSON values: ``record`` (the edit's resolved parameters), ``model`` (the identity of the
            weights that made it), ``photo`` (digests of the image, mask and control image it was
            made from), ``step`` and ``total_steps``, ``scheduler`` (the sampler's state: its values, tensors
            by name) -- whatever the writer put there besides the tensor table, which ``to_bytes`` writes.
        tensors: by name: the latents, the predicted clean latents the checkpoint image shows, the
            generator's state and the sampler's tensors.
    """

    header: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        table, chunks, offset = [], [], 0
        for name, tensor in self.tensors.items():
            array = tensor.detach().cpu().contiguous().numpy()
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            table.append({"name": name, "dtype": str(tensor.dtype).removeprefix("torch."),
                          "shape": list(array.shape), "offset": offset, "nbytes": len(raw)})
            chunks.append(raw)
            offset += len(raw)
        header = json.dumps({**self.header, "tensors": table}, sort_keys=True, ensure_ascii=False).encode()
        body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header + b"".join(chunks)
        return body + hashlib.sha256(body).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> "ResumeState":
        """Parse a state a caller sent back.

        Raises:
            ResumeStateError: not a state, another format version, truncated or changed (the digest), or a
                header or tensor table that does not hold together.
        """
        data = bytes(data)
        if len(data) < _PREFIX.size + DIGEST_BYTES:
            raise ResumeStateError(f"is {len(data)} bytes: too short to be a resume state (a checkpoint's "
                                   f"resume_state, as the server sent it)")
        magic, version, header_length = _PREFIX.unpack_from(data)
        if magic != MAGIC:
            raise ResumeStateError(f"does not start with {MAGIC.decode()!r}: not a resume state")
        if version != FORMAT_VERSION:
            raise ResumeStateError(f"is of format version {version}; this server reads version {FORMAT_VERSION}")
        body, digest = data[:-DIGEST_BYTES], data[-DIGEST_BYTES:]
        if hashlib.sha256(body).digest() != digest:
            raise ResumeStateError("its SHA-256 digest does not match its bytes: it was truncated or changed")
        if header_length > min(MAX_HEADER_BYTES, len(body) - _PREFIX.size):
            raise ResumeStateError(f"declares a header of {header_length} bytes, more than it holds")
        try:
            header = json.loads(body[_PREFIX.size:_PREFIX.size + header_length].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ResumeStateError(f"its header is not JSON: {error}") from None
        if not isinstance(header, dict):
            raise ResumeStateError("its header is not a JSON object")
        payload = memoryview(body)[_PREFIX.size + header_length:]
        tensors = _read_tensors(header.pop("tensors", None), payload)
        return cls(header=header, tensors=tensors)

    def tensor(self, name: str) -> torch.Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise ResumeStateError(f"holds no tensor {name!r}") from None

    def value(self, name: str, kind: type | tuple[type, ...]) -> Any:
        """The header's ``name``, checked to be of ``kind``."""
        found = self.header.get(name)
        if not isinstance(found, kind) or isinstance(found, bool) and kind is int:
            raise ResumeStateError(f"its header's {name!r} is missing or not of the right type")
        return found


def _read_tensors(table: Any, payload: memoryview) -> dict[str, torch.Tensor]:
    if not isinstance(table, list) or len(table) > MAX_TENSORS:
        raise ResumeStateError(f"its header has no tensor table (or one of more than {MAX_TENSORS} tensors)")
    tensors = {}
    for entry in table:
        try:
            name, dtype, shape = entry["name"], DTYPES[entry["dtype"]], entry["shape"]
            offset, nbytes = entry["offset"], entry["nbytes"]
        except (KeyError, TypeError):
            raise ResumeStateError(f"its tensor table holds an entry it cannot read: {entry!r:.120}") from None
        numbers = [offset, nbytes, *shape] if isinstance(shape, list) else None
        if (not isinstance(name, str) or numbers is None or len(shape) > MAX_DIMS
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers)):
            raise ResumeStateError(f"its tensor table's entry {entry!r:.120} is malformed")
        itemsize = torch.empty((), dtype=dtype).element_size()
        if math.prod(shape) * itemsize != nbytes or offset + nbytes > len(payload):
            raise ResumeStateError(f"its tensor {name!r} does not fit its bytes ({shape} {entry['dtype']} "
                                   f"at {offset}+{nbytes} of a payload of {len(payload)})")
        array = np.frombuffer(payload[offset:offset + nbytes], dtype=np.dtype(entry["dtype"]).newbyteorder("<"))
        tensors[name] = torch.from_numpy(array.astype(array.dtype.newbyteorder("="), copy=True).reshape(shape))
    return tensors
