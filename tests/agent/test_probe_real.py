"""`agent probe --weights-dir` on a real-format folder: rows marked weights=real, timed on the serving stage code,
stored by the planner; without a folder the probe asks for one (or for --synthetic) instead of inventing weights."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from agent.cli import app
from agent.client import PlannerClient
from agent.report import probe_run_body, read_csv
from agent.target import resolve_target
from planner.api.main import create_app
from planner.core.config import Settings
from planner.db import models as m
from tests.conftest import BACKENDS
from tests.models.tiny_folders import TinyFolders

pytest.importorskip("torch")
TOKEN = "probe-real-admin-token-0123456789"


def test_probe_without_a_folder_asks_for_one_or_for_synthetic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GFP_MODEL_DIRS", raising=False)
    out = CliRunner().invoke(app, ["probe", "--model", "sd15", "--tiny", "--cpu"])
    assert out.exit_code == 2
    text = " ".join(out.output.split())
    assert "no weights for model 'sd15'" in text
    assert "--model-dir sd15=DIR" in text
    assert "--synthetic" in text


def test_probe_refuses_a_folder_of_another_architecture(tiny_model_dirs: TinyFolders) -> None:
    out = CliRunner().invoke(app, ["probe", "--model", "sdxl", "--weights-dir", str(tiny_model_dirs["sd15"]), "--cpu"])
    assert out.exit_code == 2
    text = " ".join(out.output.split())
    assert "StableDiffusionPipeline" in text
    assert "wrong architecture" in text
    assert "model_index.json" in text


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS[-1:], indirect=True)
def test_probe_on_a_real_folder_stores_real_rows_in_the_planner(
    tiny_model_dirs: TinyFolders, tmp_path: Path, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stagekit import serving

    calls: dict[str, int] = {}
    for cls in serving.STAGES.values():  # the probe must time the serving stages themselves

        def counted(self: Any, batch: Any, _real: Any = cls.__call__, _name: str = cls.__name__) -> Any:
            calls[_name] = calls.get(_name, 0) + 1
            return _real(self, batch)

        monkeypatch.setattr(cls, "__call__", counted)
    folder = tiny_model_dirs["sd15"]
    csv = tmp_path / "m.csv"
    args = ["probe", "--model", "sd15", "--weights-dir", str(folder), "--tiny", "--cpu", "-r", "fp32"]
    out = CliRunner().invoke(app, [*args, "--output", str(csv), "--no-quality", "--max-windows", "2"])
    assert out.exit_code == 0, out.output
    assert f"sd15: weights=real from {folder}" in " ".join(out.output.split())
    rows = [r.row for r in read_csv(csv)]
    assert {r.stage for r in rows} == {"text_encoder", "denoiser", "vae_decoder"}
    assert all(r.weights == "real" for r in rows)
    assert all(r.status == "ok" for r in rows), [(r.stage, r.error) for r in rows]
    assert all(r.latency_ms and r.latency_ms > 0 for r in rows)
    timed = sum(r.calls or 0 for r in rows if r.stage == "text_encoder")
    assert calls.get("TextStage", 0) >= timed > 0, calls  # tokenizer + encode_prompt, as a worker runs it
    assert calls.get("DenoiserStage", 0) > 0, calls
    assert calls.get("VaeStage", 0) > 0, calls

    # the run reaches the planner: the operator defines the CPU "family", the host registers, the run is stored
    target = resolve_target(force_cpu=True)
    api = TestClient(
        create_app(
            Settings(admin_token=SecretStr(TOKEN), database_url=str(engine.url), heartbeat_sweep_s=0), engine=engine
        )
    )
    with api:
        defined = api.put(
            f"/v1/gpu-families/{target.family_id}",
            json={"name": "development CPU", "vendor": "other", "memory_gib": 16},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert defined.status_code in (200, 201), defined.text
        client = PlannerClient("http://testserver", attempts=1, client=api)
        reg = client.register({"name": f"real-{uuid.uuid4().hex[:6]}", "gpus": []}, enrollment_token=TOKEN)
        client.token = reg["token"]
        run_id = rows[0].probe_run
        assert run_id is not None
        body = probe_run_body(
            run_id=run_id, host_id=reg["host_id"], kind="probe", target=target, weights="real",
            started_at=datetime.now(UTC), rows=rows,
        )  # fmt: skip
        assert client.submit_run(body) is True
    target.close()
    with engine.connect() as conn:
        stored = conn.execute(
            select(m.Measurement.stage, m.Measurement.weights).where(m.Measurement.model_id == "sd15")
        ).all()
    assert {s for s, _ in stored} >= {"text_encoder", "denoiser", "vae_decoder"}
    assert {w for _, w in stored} == {"real"}
