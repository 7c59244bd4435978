"""Quality drift of a recipe against the reference recipe: PSNR and SSIM, by torchmetrics.

SSIM is the standard one (Wang et al. 2004): gaussian window 11 x 11, sigma 1.5, K1 0.01, K2 0.03, averaged over
channels and pixels. On synthetic weights these numbers measure numeric drift between recipes, not perceptual
quality (DESIGN.md): callers label them with the weights they were measured on.
"""

from __future__ import annotations

import math

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def psnr(x: torch.Tensor, ref: torch.Tensor, *, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB (inf when identical). `data_range` defaults to the reference's span."""
    a = x.detach().float()
    b = ref.detach().float()
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("psnr: non-finite values (the recipe or the reference produced NaN/inf)")
    if torch.equal(a, b):
        return math.inf
    span = data_range if data_range is not None else float(b.max() - b.min())
    return float(peak_signal_noise_ratio(a, b, data_range=span if span > 0 else 1.0))


def ssim(
    x: torch.Tensor,
    ref: torch.Tensor,
    *,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> float:
    """Mean SSIM of two image batches (N, C, H, W) with values over `data_range` (1.0 for [0, 1] images).

    Images smaller than the window use a window as large as they allow (odd, at least 3).
    """
    a = x.detach().float()
    b = ref.detach().float()
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"ssim: need two (N, C, H, W) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    size = min(window_size, a.shape[-1], a.shape[-2])
    if size % 2 == 0:
        size -= 1
    size = max(size, 3)
    value = structural_similarity_index_measure(
        a, b, gaussian_kernel=True, sigma=sigma, kernel_size=size, data_range=data_range, k1=k1, k2=k2
    )
    assert isinstance(value, torch.Tensor)  # one mean, not the (value, full image) pair
    return float(value.clamp(-1.0, 1.0))


def to_unit_images(decoded: torch.Tensor) -> torch.Tensor:
    """VAE output in about [-1, 1] -> images in [0, 1], as a pipeline's postprocess does."""
    return ((decoded.detach().float() + 1.0) / 2.0).clamp(0.0, 1.0)
