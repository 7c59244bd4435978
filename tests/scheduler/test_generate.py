"""`scheduler generate`: one PNG on this host through the workers' stage code, from the model's folder; a broken
install is reported (path and part) with no traceback, and a worker whose only pool is broken will not start."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from scheduler.cli import app
from scheduler.config import SchedulerSettings
from tests.conftest import BACKENDS
from tests.models.tiny_folders import TinyFolders, copy_folder, reference_image
from tests.scheduler.conftest import PoolDef, WorkerProcess, create_plan

pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")


def _generate(*args: str) -> object:
    return CliRunner().invoke(
        app, ["generate", "--device", "cpu", "--steps", "2", "--height", "64", "--width", "64", *args]
    )


def test_generate_writes_the_image_the_diffusers_pipeline_makes(tiny_model_dirs: TinyFolders, tmp_path: Path) -> None:
    folder = tiny_model_dirs["z-image-turbo"]
    out = tmp_path / "x.png"
    args = ["--model", "z-image-turbo", "--model-dir", f"z-image-turbo={folder}", "--prompt", "a red cat"]
    result = _generate(*args, "--seed", "5", "--out", str(out))
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert '"weights": "real"' in result.output  # type: ignore[attr-defined]
    opened = Image.open(io.BytesIO(out.read_bytes()))
    assert opened.text == {"weights": "real", "model": "z-image-turbo", "seed": "5"}
    image = np.asarray(opened.convert("RGB"))
    ref = reference_image(folder, "z-image-turbo", prompt="a red cat", seed=5, steps=2)
    assert int(np.abs(image.astype(np.int16) - ref.astype(np.int16)).max()) <= 1


def test_generate_on_a_broken_folder_names_the_path_and_part(tiny_model_dirs: TinyFolders, tmp_path: Path) -> None:
    folder = copy_folder(tiny_model_dirs["sd15"], tmp_path / "sd15")
    for f in (folder / "tokenizer").iterdir():
        f.unlink()
    result = _generate(
        "--model", "sd15", "--model-dir", f"sd15={folder}", "--prompt", "x", "--out", str(tmp_path / "y.png")
    )
    assert result.exit_code == 1
    text = " ".join(result.output.split())  # type: ignore[attr-defined]
    assert f"part 'tokenizer' ({folder / 'tokenizer'}) has no tokenizer files" in text
    assert "Traceback" not in text
    assert not (tmp_path / "y.png").exists()


def test_generate_without_weights_says_how_to_name_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("GFP_MODEL_DIRS", raising=False)
    result = _generate("--model", "sdxl", "--prompt", "x", "--out", str(tmp_path / "z.png"))
    assert result.exit_code == 1
    assert "--model-dir sdxl=DIR" in " ".join(result.output.split())  # type: ignore[attr-defined]


@pytest.mark.redis
@pytest.mark.parametrize("backend", BACKENDS[-1:], indirect=True)
def test_a_worker_whose_only_pool_is_broken_exits_with_the_reason(
    settings: SchedulerSettings, engine: Engine, fleet_name: str, tiny_model_dirs: TinyFolders, tmp_path: Path
) -> None:
    """Checked before any queue is taken: no job of that pool is ever claimed, and the worker says why it stops."""
    folder = copy_folder(tiny_model_dirs["sdxl"], tmp_path / "sdxl")
    (folder / "model_index.json").write_text("{not json")
    pool = PoolDef("broken", 0, "l4-24gb", "sdxl", ["text_encoder", "denoiser", "vae_decoder"], batch=1)
    create_plan(engine, fleet_name, [pool])
    worker = WorkerProcess(
        settings.model_copy(update={"synthetic": False}),
        [pool.name],
        name="broken@t",
        log_path=tmp_path / "w.log",
        env={"GFP_MODEL_DIRS": f"sdxl={folder}"},
    )
    try:
        assert worker.proc.wait(timeout=120) == 1
    finally:
        worker.stop()
    log = worker.log()
    assert f"pool {pool.name} refused" in log
    assert f"worker broken@t can serve none of its pools: {pool.name}: model 'sdxl': cannot read {folder}" in log
    assert "Traceback" not in log
