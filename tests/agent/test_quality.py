"""PSNR and SSIM (torchmetrics behind the agent's API): known values."""

from __future__ import annotations

import math

import pytest
import torch

from agent.quality import psnr, ssim, to_unit_images


def test_psnr_identical_is_infinite_and_known_mse() -> None:
    a = torch.rand(1, 3, 16, 16)
    assert psnr(a, a) == math.inf
    b = a + 0.1  # mse 0.01 over range 1 -> 20 dB
    assert psnr(b, a, data_range=1.0) == pytest.approx(20.0, abs=1e-4)


def test_psnr_refuses_nan() -> None:
    a = torch.rand(4)
    with pytest.raises(ValueError, match="non-finite"):
        psnr(a * float("nan"), a)


def test_ssim_identical_is_one_and_drops_with_noise() -> None:
    torch.manual_seed(0)
    a = torch.rand(2, 3, 32, 32)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    slight = ssim((a + 0.02 * torch.randn_like(a)).clamp(0, 1), a)
    heavy = ssim((a + 0.3 * torch.randn_like(a)).clamp(0, 1), a)
    assert 0.9 < slight < 1.0
    assert heavy < slight


def test_ssim_of_constant_images_follows_the_luminance_term() -> None:
    # Constant images: variances are zero, SSIM = (2 mu_a mu_b + c1) / (mu_a^2 + mu_b^2 + c1).
    a = torch.full((1, 1, 16, 16), 0.5)
    b = torch.full((1, 1, 16, 16), 0.25)
    c1 = 0.01**2
    expected = (2 * 0.5 * 0.25 + c1) / (0.5**2 + 0.25**2 + c1)
    assert ssim(a, b) == pytest.approx(expected, rel=1e-5)


def test_ssim_small_images_use_a_smaller_window() -> None:
    a = torch.rand(1, 3, 8, 8)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-6)


def test_unit_images() -> None:
    x = torch.tensor([-2.0, -1.0, 0.0, 1.0, 2.0])
    assert to_unit_images(x).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]
