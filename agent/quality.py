"""Quality drift of a recipe against the reference recipe: PSNR and SSIM, in plain torch.

SSIM is the standard one (Wang et al. 2004): gaussian window 11 x 11, sigma 1.5, K1 0.01, K2 0.03, computed
per channel and averaged; written here because the GPU machines have no scikit-image. On synthetic weights
these numbers measure numeric drift between recipes, not perceptual quality (DESIGN.md): callers label them
with the weights they were measured on.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional


def psnr(x: torch.Tensor, ref: torch.Tensor, *, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB (inf when identical). `data_range` defaults to the reference's span."""
    a = x.detach().float()
    b = ref.detach().float()
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("psnr: non-finite values (the recipe or the reference produced NaN/inf)")
    mse = float(torch.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    span = data_range if data_range is not None else float(b.max() - b.min())
    if span <= 0:
        span = 1.0
    return 10.0 * math.log10(span * span / mse)


def _gaussian_window(size: int, sigma: float, channels: int, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2 * sigma * sigma))
    g = g / g.sum()
    window = torch.outer(g, g)
    return window.expand(channels, 1, size, size).contiguous()


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
    channels = a.shape[1]
    w = _gaussian_window(size, sigma, channels, a.device)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return functional.conv2d(t, w, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
    den = (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    return float((num / den).mean().clamp(-1.0, 1.0))


def to_unit_images(decoded: torch.Tensor) -> torch.Tensor:
    """VAE output in about [-1, 1] -> images in [0, 1], as a pipeline's postprocess does."""
    return ((decoded.detach().float() + 1.0) / 2.0).clamp(0.0, 1.0)
