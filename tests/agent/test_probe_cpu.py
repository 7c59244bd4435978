"""The real probe code path on the tiny models, on the CPU: every stage, several recipes, two batches.

One sweep (module fixture) writes the measurements CSV the way `agent probe --output` does; the tests read
it back through the contract's parser and check columns, values, and how failed cells are recorded.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from agent.probe import CACHE_TRAJECTORY_STEPS, ProbeOptions, Sweep, predicted_cell_s
from agent.report import CsvSink, load_existing
from agent.target import Target, resolve_target
from agent.timing import MIN_P95_CALLS, SMOKE_TIMER
from planner.catalog import known_model
from planner.measurements.contract import ALL_COLUMNS, CONTRACT_COLUMNS, MeasurementRow
from planner.measurements.csvio import read_csv
from stagekit.recipes import RecipeOptions

pytestmark = pytest.mark.slow

FAST = SMOKE_TIMER
SD_RECIPES = ("fp32", "bf16", "bf16-channels-last", "bf16-tiny-vae", "bf16-fbcache", "fp8")


@pytest.fixture(scope="module")
def target() -> Target:
    torch.set_num_threads(2)
    t = resolve_target(force_cpu=True)
    t.ceilings = {"bf16": 0.05, "memory": 0.01}  # as a calibration would give, so cells get a bound
    return t


def _opts(model: str, recipes: tuple[str, ...], **kw: object) -> ProbeOptions:
    # Two batches for the reference and fp32; one for the variants (a CPU runs bf16 convolutions slowly).
    base: dict[str, object] = {
        "max_batch_by_recipe": {"bf16-channels-last": 1, "bf16-tiny-vae": 1, "bf16-fbcache": 1},
        "batches": (1, 2),
        "tiny": True,
        "timer": FAST,
        "height": 32,
        "width": 32,
        "quality_steps": 1,
        "synthetic_drift": True,  # random weights: numeric drift only because it is asked for, labelled synthetic
        "recipe_options": RecipeOptions(quant_min_features=16),
    }
    base.update(kw)
    return ProbeOptions(model=model, recipes=recipes, **base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def sweep_csv(target: Target, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CSV of a few sweeps, written row by row as `agent probe --output` writes it."""
    out = tmp_path_factory.mktemp("probe") / "measurements.csv"
    sink = CsvSink(out)
    Sweep(_opts("sd15", SD_RECIPES), target, on_row=sink).run()
    # Tiled decode at 64 px (32 px tiles): one batch, it is the slowest cell on a CPU.
    Sweep(
        _opts("sd15", ("bf16-tiled-vae",), stages=("vae_decoder",), batches=(1,), height=64, width=64),
        target,
        on_row=sink,
    ).run()
    # fbcache needs a transformer with diffusers cache hooks: Flux (the UNet reports it unsupported).
    Sweep(_opts("flux-schnell", ("bf16", "bf16-fbcache"), stages=("denoiser",)), target, on_row=sink).run()
    # A memory cap between the text encoder's bf16 batch-1 footprint and its fp32 batch-2 footprint (cells at
    # 48 px so they do not collide with the uncapped ones): some cells must end `oom`, the sweep goes on.
    peaks = {(r.recipe, r.batch): r.peak_mem_gib for r in sink.rows if r.stage == "text_encoder" and r.height == 32}
    small, large = peaks[("bf16", 1)], peaks[("fp32", 2)]
    assert small is not None
    assert large is not None
    assert small < large
    capped = _opts(
        "sd15",
        ("fp32", "bf16"),
        stages=("text_encoder",),
        memory_cap_gib=(small + large) / 2,
        quality=False,
        height=48,
        width=48,
    )
    Sweep(capped, target, on_row=sink).run()
    return out


@pytest.fixture(scope="module")
def rows(sweep_csv: Path) -> list[MeasurementRow]:
    return [located.row for located in read_csv(sweep_csv)]


def _get(rows: list[MeasurementRow], model: str, stage: str, recipe: str, batch: int, size: int = 32) -> MeasurementRow:
    found = [r for r in rows if (r.model, r.stage, r.recipe, r.batch, r.height) == (model, stage, recipe, batch, size)]
    assert len(found) == 1, (model, stage, recipe, batch, len(found))
    return found[0]


def test_csv_has_every_contract_column_in_order(sweep_csv: Path) -> None:
    with sweep_csv.open() as fh:
        header = next(csv.reader(fh))
    assert tuple(header[: len(CONTRACT_COLUMNS)]) == CONTRACT_COLUMNS
    assert set(header) == set(ALL_COLUMNS)


def test_every_cell_is_recorded_once(rows: list[MeasurementRow]) -> None:
    cells = {(r.model, r.stage, r.recipe, r.batch, r.height) for r in rows}
    assert len(cells) == len(rows)
    sd_stages = {r.stage for r in rows if r.model == "sd15"}
    assert sd_stages == {"text_encoder", "denoiser", "vae_decoder"}
    assert {r.batch for r in rows} == {1, 2}


def test_ok_cells_have_plausible_values(rows: list[MeasurementRow]) -> None:
    ok = [r for r in rows if r.status == "ok"]
    assert len(ok) >= 20
    for r in ok:
        assert r.latency_ms is not None
        assert 0 < r.latency_ms < 60_000
        # The smoke timer's two calls are no sample for a 95th percentile: the row says not measured.
        assert r.calls is not None
        if r.calls >= MIN_P95_CALLS:
            assert r.latency_p95_ms is not None
            assert r.latency_p95_ms >= r.latency_ms
        else:
            assert r.latency_p95_ms is None
        assert r.cpu_model
        assert r.peak_mem_gib is not None
        assert 0 < r.peak_mem_gib < 1
        assert r.weights == "synthetic"
        assert r.source == "measured"
        assert r.gpu_family == "cpu"
        assert (r.height, r.width) in ((32, 32), (48, 48), (64, 64))
        assert r.windows is not None
        assert r.windows >= 2
        assert r.calls is not None
        assert r.calls >= 2
        assert r.tflops_per_call is not None
        assert r.tflops_per_call > 0
        assert r.achieved_tflops is not None
        assert r.achieved_tbps is not None
        assert r.bound in ("compute", "memory", "overhead")
        assert r.torch
        assert r.agent_version
        assert r.probe_run
        assert r.measured_at is not None
        assert r.error is None or r.error.startswith("unstable")


def test_batch_two_costs_twice_the_flops(rows: list[MeasurementRow]) -> None:
    one = _get(rows, "sd15", "denoiser", "bf16", 1)
    two = _get(rows, "sd15", "denoiser", "bf16", 2)
    assert two.tflops_per_call == pytest.approx(2 * one.tflops_per_call, rel=1e-6)  # type: ignore[operator]
    assert two.peak_mem_gib > one.peak_mem_gib  # type: ignore[operator]


def test_quality_drift_against_the_reference(rows: list[MeasurementRow]) -> None:
    # The quality reference is the stage's highest-precision recipe, fp32: identical to itself (PSNR stored as
    # the contract's 1000 dB), and bf16 drifts from it.
    ref = _get(rows, "sd15", "denoiser", "fp32", 1)
    assert ref.psnr_latent == 1000.0
    assert ref.ssim_image == pytest.approx(1.0)
    assert ref.quality_weights == "synthetic"
    bf16 = _get(rows, "sd15", "denoiser", "bf16", 1)
    assert bf16.quality_weights == "synthetic"
    assert bf16.psnr_latent is not None
    assert 10 < bf16.psnr_latent < 1000.0
    assert bf16.psnr_image is not None
    assert bf16.ssim_image is not None
    assert bf16.ssim_image <= 1.0
    tiny_vae = _get(rows, "sd15", "vae_decoder", "bf16-tiny-vae", 1)
    cl_vae = _get(rows, "sd15", "vae_decoder", "bf16-channels-last", 1)
    # Another network decodes worse than the same network in another memory layout.
    assert tiny_vae.psnr_image < cl_vae.psnr_image  # type: ignore[operator]
    assert tiny_vae.psnr_latent is None
    tiled = _get(rows, "sd15", "vae_decoder", "bf16-tiled-vae", 1, size=64)
    assert tiled.status == "ok"
    assert tiled.psnr_image is not None
    assert tiled.psnr_image < 1000.0
    te = _get(rows, "sd15", "text_encoder", "bf16", 2)
    assert te.psnr_latent is not None
    assert te.psnr_latent < 1000.0
    assert te.psnr_image is None


def test_fp8_is_unsupported_on_the_cpu_with_the_reason(rows: list[MeasurementRow]) -> None:
    for stage in ("text_encoder", "denoiser"):
        for b in (1, 2):
            r = _get(rows, "sd15", stage, "fp8", b)
            assert r.status == "unsupported"
            assert r.latency_ms is None
            assert r.error
            assert "compute capability" in r.error


def test_step_cache_on_a_unet_is_unsupported_but_runs_on_flux(rows: list[MeasurementRow]) -> None:
    unet = _get(rows, "sd15", "denoiser", "bf16-fbcache", 1)
    assert unet.status == "unsupported"
    assert "cache" in (unet.error or "").lower()
    flux = _get(rows, "flux-schnell", "denoiser", "bf16-fbcache", 1)
    assert flux.status == "ok"
    assert flux.cache_skip_rate is not None
    assert 0 <= flux.cache_skip_rate <= 1
    # Each timed window is one whole trajectory (the cache's skips depend on the step).
    steps = min(known_model("flux-schnell").default_steps, CACHE_TRAJECTORY_STEPS)
    assert flux.calls is not None
    assert flux.calls % steps == 0
    assert flux.calls >= 2 * steps


def test_out_of_memory_cells_are_recorded_and_the_sweep_goes_on(rows: list[MeasurementRow]) -> None:
    capped = {(r.recipe, r.batch): r for r in rows if r.height == 48}
    assert capped[("bf16", 1)].status == "ok"
    assert capped[("fp32", 2)].status == "oom"
    oom = [r for r in capped.values() if r.status == "oom"]
    for r in oom:
        assert r.latency_ms is None
        assert r.error
        assert "memory cap" in r.error or "not run" in r.error


def test_failed_cells_carry_status_and_error_in_the_csv(sweep_csv: Path) -> None:
    with sweep_csv.open() as fh:
        raw = list(csv.DictReader(fh))
    failed = [r for r in raw if r["status"] != "ok"]
    assert {r["status"] for r in failed} >= {"oom", "unsupported"}
    for r in failed:
        assert r["error"]
        assert r["latency_ms"] == ""


def test_rerun_resumes_and_skips_done_cells(target: Target, sweep_csv: Path) -> None:
    previous = load_existing(sweep_csv)
    sweep = Sweep(_opts("sd15", SD_RECIPES), target, done={r.cell for r in previous})
    assert sweep.total() == 0
    state = sweep.run()
    assert state.rows == []
    assert state.skipped == len([r for r in previous if r.model == "sd15" and r.height == 32])


def test_budget_stops_the_sweep(target: Target) -> None:
    state = Sweep(_opts("sd15", ("bf16",), budget_s=0.0), target).run()
    assert state.rows == []
    assert state.stopped
    assert "budget" in state.stopped


def test_a_cell_costs_its_compile_once_and_the_rest_in_proportion_to_the_batch() -> None:
    # whole-UNet compile at batch 1: 90 s of compile, 10 s of timing -> batch 16 pays the compile once more
    assert predicted_cell_s(16, last_batch=1, last_wall_s=100.0, last_compile_s=90.0) == pytest.approx(250.0)
    # a step-cache cell (no compile) times whole trajectories: twice the batch, twice the time
    assert predicted_cell_s(8, last_batch=4, last_wall_s=140.0, last_compile_s=None) == pytest.approx(280.0)
    # a compile time reported longer than the cell itself counts as the whole cell
    assert predicted_cell_s(2, last_batch=1, last_wall_s=5.0, last_compile_s=9.0) == pytest.approx(5.0)


class _FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("budget_s", "batches_run"), [(150.0, [1]), (400.0, [1, 2])])
def test_the_sweep_does_not_start_a_cell_it_predicts_to_end_past_the_budget(
    target: Target, monkeypatch: pytest.MonkeyPatch, budget_s: float, batches_run: list[int]
) -> None:
    """Each cell takes 100 s of the fake clock: batch 2 is predicted at 200 s, which 50 s of budget cannot hold."""
    clock = _FakeClock()
    real_cell = Sweep._cell

    def slow_cell(self: Sweep, *args: object, **kwargs: object) -> object:
        clock.now += 100.0
        return real_cell(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Sweep, "_cell", slow_cell)
    opts = _opts("sd15", ("bf16",), stages=("vae_decoder",), budget_s=budget_s, quality=False)
    state = Sweep(opts, target, clock=clock).run()
    assert [r.batch for r in state.rows] == batches_run
    assert all(r.status == "ok" for r in state.rows)
    if batches_run == [1]:
        assert state.stopped is not None
        assert "vae_decoder bf16 batch 2 would take about 200 s" in state.stopped
        assert "50 s of the 150 s budget are left" in state.stopped
    else:
        assert state.stopped is None


@pytest.mark.parametrize(
    ("backend", "fp8_reads"),
    [("agent", None), ("torchao", "0.18.0")],
)
def test_the_torchao_column_names_torchao_only_on_cells_it_quantized(backend: str, fp8_reads: str | None) -> None:
    """A host with torchao installed that quantizes with the agent's layers must not record torchao's version."""
    t = resolve_target(force_cpu=True)
    t.inventory = t.inventory.model_copy(update={"torchao_version": "0.18.0"})
    opts = _opts(
        "sd15",
        ("bf16", "fp8"),
        batches=(1,),
        stages=("denoiser",),
        quality=False,
        recipe_options=RecipeOptions(quant_backend=backend, quant_min_features=16),
    )
    rows = {r.recipe: r for r in Sweep(opts, t).run().rows}
    assert rows["bf16"].torchao is None
    assert rows["fp8"].torchao == fp8_reads
    assert rows["fp8"].torch == t.inventory.torch_version
