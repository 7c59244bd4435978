"""benchmarks/aims.py: each aim's figure combined from measured cells the way a plan does."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import load_benchmark

HEAD = "gpu_family,model,stage,recipe,batch,height,width,latency_ms,status,measured_at\n"


def test_the_aims_combine_steps_text_encoder_and_the_fastest_vae(tmp_path: Path) -> None:
    aims = load_benchmark("aims")
    csv = tmp_path / "m.csv"
    csv.write_text(
        HEAD
        + "g,sdxl,denoiser,fast,16,1024,1024,400,ok,t1\n"
        + "g,sdxl,denoiser,slow,16,1024,1024,500,ok,t2\n"
        + "g,sdxl,denoiser,broken,16,1024,1024,1,failed,t3\n"  # not ok: never counted
        + "g,sdxl,text_encoder,bf16,16,1024,1024,20,ok,t\n"
        + "g,sdxl,vae_decoder,bf16,16,1024,1024,980,ok,t\n"
        + "g,sdxl,vae_decoder,bf16-compile,16,1024,1024,480,ok,t\n"
        + "g,flux-dev,denoiser,fp8,1,1024,1024,100,ok,t\n"
        + "g,flux-dev,text_encoder,bf16,1,1024,1024,25,ok,t\n"
        + "g,flux-dev,vae_decoder,bf16,1,1024,1024,75,ok,t\n",
        encoding="utf-8",
    )
    lines = aims.report(aims.load(csv), "g")
    # SDXL: 16 images per (30 x 400 + 20 + 480) ms = 1.28 images/s; Flux: 28 x 100 + 25 + 75 ms = 2.90 s.
    assert lines[0].startswith("g SDXL aim (1.5 images/s): 1.280 images/s, 0.85x the aim: fast batch 16")
    assert "VAE bf16-compile 480.0" in lines[0]
    assert lines[1] == "  then slow batch 16: 1.032 images/s"
    assert lines[2].startswith("g Flux-dev aim (under 2.5 s): 2.90 s, 1.16x the aim: fp8")
