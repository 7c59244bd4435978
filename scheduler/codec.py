"""Bytes for what crosses process boundaries: intermediates (tensors + values) and result images (PNG).

Intermediates are a safetensors blob: no pickle (a shared Redis must not hand a worker code to run), every
dtype torch has (bf16 and fp8 included, which numpy lacks), and no torch import for values that hold none
(no-op pools). The JSON values and which tensors were numpy arrays ride in the blob's metadata. Images are PNGs
written by Pillow (no torch on the result path).
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin
from safetensors import SafetensorError
from safetensors.numpy import load as load_numpy
from safetensors.numpy import save as save_numpy

VALUES = "scheduler.values"
"""Metadata key: the JSON values of the mapping (everything that is not a tensor)."""
NUMPY = "scheduler.numpy"
"""Metadata key: the names of the tensors that were numpy arrays (they come back as numpy arrays)."""
TORCH = "scheduler.torch"
"""Metadata key: "1" when the blob holds torch tensors (unpacking it needs torch)."""


class CodecError(ValueError):
    """Bytes that are not an intermediate this code wrote."""


def _is_torch(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "dtype") and hasattr(value, "shape")


def pack(values: Mapping[str, Any]) -> bytes:
    """One flat mapping of name -> torch tensor, numpy array, or JSON value, as bytes."""
    arrays = {k: np.ascontiguousarray(v) for k, v in values.items() if isinstance(v, np.ndarray)}
    tensors = {k: v for k, v in values.items() if _is_torch(v)}
    plain = {k: v for k, v in values.items() if k not in arrays and k not in tensors}
    metadata = {
        VALUES: json.dumps(plain, separators=(",", ":")),
        NUMPY: json.dumps(sorted(arrays)),
        TORCH: "1" if tensors else "0",
    }
    if not tensors:
        return save_numpy(arrays, metadata=metadata)
    import torch  # a worker-only path: only tensors lead here
    from safetensors.torch import save as save_torch

    # each tensor copied to its own CPU storage: safetensors refuses tensors that share one (views of a batch)
    out = {k: t.detach().to("cpu").contiguous().clone() for k, t in tensors.items()}
    out.update({k: torch.from_numpy(a) for k, a in arrays.items()})
    return save_torch(out, metadata=metadata)


def unpack(data: bytes) -> dict[str, Any]:
    """The mapping `pack` wrote (torch tensors come back on the CPU)."""
    metadata = _metadata(data)
    out: dict[str, Any] = json.loads(metadata[VALUES])
    numpy_names = set(json.loads(metadata[NUMPY]))
    if metadata.get(TORCH) != "1":
        out.update(load_numpy(bytes(data)))
        return out
    from safetensors.torch import load as load_torch

    for name, tensor in load_torch(bytes(data)).items():
        out[name] = tensor.numpy() if name in numpy_names else tensor
    return out


def _metadata(data: bytes) -> dict[str, str]:
    """The blob's safetensors metadata (the format: a little-endian u64 header length, then the JSON header)."""
    try:
        (length,) = struct.unpack_from("<Q", data, 0)
        header = json.loads(bytes(data[8 : 8 + length]))
        metadata = header["__metadata__"]
        if VALUES in metadata and NUMPY in metadata:
            return dict(metadata)
    except (struct.error, ValueError, KeyError, TypeError, SafetensorError):
        pass
    raise CodecError("not an intermediate written by scheduler.codec.pack (a safetensors blob with its metadata)")


def encode_png(pixels: np.ndarray, level: int = 6, *, text: Mapping[str, str] | None = None) -> bytes:
    """A PNG of an (H, W), (H, W, 3) or (H, W, 4) uint8 array; `text` as tEXt chunks (what made the image)."""
    arr = np.asarray(pixels)
    if arr.dtype != np.uint8:
        raise ValueError(f"PNG pixels must be uint8, not {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4))):
        raise ValueError(f"PNG pixels must be (H, W[, 1|3|4]), not {arr.shape}")
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=level, pnginfo=info)
    return buf.getvalue()


def decode_png_size(data: bytes) -> tuple[int, int]:
    """(width, height) of a PNG, from its header."""
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
            width, height = img.size
    except (OSError, ValueError) as exc:
        raise CodecError("not a PNG") from exc
    return int(width), int(height)
