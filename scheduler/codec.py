"""Bytes for what crosses process boundaries: intermediates (tensors + values) and result images (PNG).

Intermediates are a small header (JSON) and the raw tensor bytes: no pickle (a shared Redis must not hand a
worker code to run), any dtype torch has (bf16 and fp8 included, which numpy lacks), and no torch import for
values that hold none (no-op pools). Images are encoded by a minimal PNG writer (zlib), so the result path
needs neither Pillow nor torch.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np

MAGIC = b"SCHT1"
_LEN = struct.Struct(">I")


class CodecError(ValueError):
    """Bytes that are not an intermediate this code wrote."""


def _is_torch(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "dtype") and hasattr(value, "shape")


def pack(values: Mapping[str, Any]) -> bytes:
    """One flat mapping of name -> torch tensor, numpy array, or JSON value, as bytes."""
    meta: dict[str, Any] = {}
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    offset = 0
    for name, value in values.items():
        if _is_torch(value):
            import torch  # a worker-only path: only tensors lead here

            t = value.detach().to("cpu").contiguous()
            raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
            entry: dict[str, Any] = {
                "name": name,
                "kind": "torch",
                "dtype": str(t.dtype).removeprefix("torch."),
                "shape": list(t.shape),
            }
        elif isinstance(value, np.ndarray):
            arr = np.ascontiguousarray(value)
            raw = arr.tobytes()
            entry = {"name": name, "kind": "numpy", "dtype": arr.dtype.str, "shape": list(arr.shape)}
        else:
            meta[name] = value
            continue
        entry.update(offset=offset, nbytes=len(raw))
        tensors.append(entry)
        blobs.append(raw)
        offset += len(raw)
    header = json.dumps({"meta": meta, "tensors": tensors}, separators=(",", ":")).encode()
    return b"".join([MAGIC, _LEN.pack(len(header)), header, *blobs])


def unpack(data: bytes) -> dict[str, Any]:
    """The mapping `pack` wrote (torch tensors come back on the CPU)."""
    if not data.startswith(MAGIC):
        raise CodecError("not an intermediate written by scheduler.codec.pack")
    start = len(MAGIC) + _LEN.size
    (hlen,) = _LEN.unpack_from(data, len(MAGIC))
    header = json.loads(data[start : start + hlen])
    body = memoryview(data)[start + hlen :]
    out: dict[str, Any] = dict(header["meta"])
    for entry in header["tensors"]:
        raw = body[entry["offset"] : entry["offset"] + entry["nbytes"]]
        if entry["kind"] == "torch":
            import torch

            dtype = getattr(torch, entry["dtype"])
            flat = (
                torch.frombuffer(bytearray(raw), dtype=torch.uint8) if len(raw) else torch.empty(0, dtype=torch.uint8)
            )
            out[entry["name"]] = flat.view(dtype).reshape(entry["shape"])
        else:
            out[entry["name"]] = np.frombuffer(raw, dtype=np.dtype(entry["dtype"])).reshape(entry["shape"]).copy()
    return out


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return _LEN.pack(len(payload)) + kind + payload + _LEN.pack(zlib.crc32(kind + payload) & 0xFFFFFFFF)


def encode_png(pixels: np.ndarray, level: int = 6, *, text: Mapping[str, str] | None = None) -> bytes:
    """A PNG of an (H, W), (H, W, 3) or (H, W, 4) uint8 array; `text` as tEXt chunks (what made the image)."""
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        raise ValueError(f"PNG pixels must be uint8, not {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"PNG pixels must be (H, W[, 1|3|4]), not {arr.shape}")
    h, w, c = arr.shape
    color = {1: 0, 3: 2, 4: 6}[c]
    rows = np.zeros((h, 1 + w * c), dtype=np.uint8)  # filter byte 0 (None) per row
    rows[:, 1:] = arr.reshape(h, w * c)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _chunk(b"IHDR", ihdr),
            *(
                _chunk(b"tEXt", k.encode("latin-1")[:79] + b"\0" + v.encode("latin-1", "replace"))
                for k, v in (text or {}).items()
            ),
            _chunk(b"IDAT", zlib.compress(rows.tobytes(), level)),
            _chunk(b"IEND", b""),
        ]
    )


def decode_png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG, from its header."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n") or data[12:16] != b"IHDR":
        raise CodecError("not a PNG")
    w, h = struct.unpack(">II", data[16:24])
    return int(w), int(h)
