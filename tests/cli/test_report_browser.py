"""The HTML report as a reader sees it: rendered by headless Chromium (Debian's `chromium` package).

The report is a file people open in a browser, so it is checked in one: every section renders with content, no
image or table runs off the page, the first screen (1280x900) shows the plan, its evidence and its cost, and the
plots keep their legends off the data (checked on the matplotlib figures the report embeds).

Chromium is a system package, not a Python one: locally the browser test skips without it; under CI (`CI=true`,
where .ci/run installs it) a missing browser fails, so the check can never silently stop running.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageStat

from planner.core.config import get_settings
from planner.db import migrate
from planner.db.seed import seed
from planner.db.session import make_engine
from tests.helpers import invoke

VIEWPORT = (1280, 900)
SECTIONS = (
    "recommendation",
    "risk--what-the-plan-rests-on",
    "what-to-probe-next",
    "prices",
    "fleet-and-savings",
    "image-against-rate",
    "cost-and-quality",
    "binding-constraints",
)
# Measures the rendered page and writes the result into the DOM, which `--dump-dom` prints. Added to a copy of
# the report only: the report itself carries no script.
PROBE = """
<script>
window.addEventListener('load', () => {
  const H = window.innerHeight, W = window.innerWidth;
  const rect = (el) => { const r = el.getBoundingClientRect(); return {top: r.top, bottom: r.bottom, right: r.right,
                                                                       height: r.height}; };
  const sections = {};
  for (const h of document.querySelectorAll('h2')) {
    let n = 0, el = h.nextElementSibling;
    while (el && el.tagName !== 'H2') {
      n += el.getBoundingClientRect().height > 0 ? 1 : 0; el = el.nextElementSibling;
    }
    sections[h.id] = {heading: rect(h), parts: n};
  }
  const firstTable = document.querySelector('#recommendation ~ table');
  const heads = [...firstTable.querySelectorAll('th')].map((th) => [th.textContent, rect(th)]);
  const images = [...document.images].map((img) => ({loaded: img.complete && img.naturalWidth > 0, ...rect(img)}));
  const out = {H, W, scrollWidth: document.documentElement.scrollWidth, sections,
               lead: rect(document.getElementById('lead')),
               leadText: document.getElementById('lead').textContent, table: rect(firstTable),
               heads: Object.fromEntries(heads), images};
  const pre = document.createElement('pre'); pre.id = 'probe-result'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def chromium() -> str:
    """The browser, or a skip (a failure under CI, where .ci/run installs it)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "headless Chromium is not installed (Debian: apt-get install -y chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; .ci/run installs it, so under CI this is a failure")
        pytest.skip(message)
    return found


def browse(browser: str, page: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    width, height = VIEWPORT
    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
        f"--window-size={width},{height}", "--virtual-time-budget=5000", *args, page.as_uri(),
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The report of the README-style review (`--report`, defaults otherwise) on the shipped data."""
    root = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{root / 'planner.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    seed(engine, reference=True)
    engine.dispose()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLANNER_SEED_REFERENCE_DATA", "true")
        get_settings.cache_clear()
        args = ["--model", "sdxl", "--rate", "10", "--p95", "10", "--report", str(root / "out")]
        result = invoke("recommend", "--database-url", url, *args)
        get_settings.cache_clear()
    assert result.returncode == 0, result.stdout + result.stderr
    return root / "out" / "index.html"


def test_every_section_renders_and_the_first_screen_shows_plan_evidence_and_cost(report: Path) -> None:
    browser = chromium()
    probe = report.with_name("probe.html")
    probe.write_text(report.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    proc = browse(browser, probe, "--dump-dom")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    found = re.search(r'<pre id="probe-result">(.*?)</pre>', proc.stdout.decode(), re.S)
    assert found is not None, "the page did not finish loading in the browser"
    page: dict[str, Any] = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))

    assert list(page["sections"]) == list(SECTIONS)
    for sid, section in page["sections"].items():
        assert section["heading"]["height"] > 0, sid
        assert section["parts"] >= 1, sid
    assert page["scrollWidth"] <= page["W"], "something runs off the right edge of the page"
    assert page["images"]
    assert all(img["loaded"] and img["right"] <= page["W"] for img in page["images"])

    # The first screen: the lead (plan, GPUs, $/hour, evidence, prices) and the plan's table with its evidence
    # and cost columns, all above the fold.
    assert page["lead"]["bottom"] <= page["H"]
    lead = page["leadText"]
    assert "Plan: " in lead
    assert "/hour" in lead
    assert "Evidence: the plan rests on measurements" in lead
    assert "Prices (on-demand" in lead
    for column in ("family", "replicas", "$/hour", "$/image", "evidence"):
        assert page["heads"][column]["bottom"] <= page["H"], column
    assert page["table"]["top"] < page["H"]


def test_the_screenshot_is_the_page_not_a_blank(report: Path, tmp_path: Path) -> None:
    browser = chromium()
    shot = tmp_path / "first-screen.png"
    proc = browse(browser, report, f"--screenshot={shot}")
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert shot.is_file()
    image = Image.open(io.BytesIO(shot.read_bytes())).convert("L")
    assert image.size == VIEWPORT
    assert ImageStat.Stat(image).stddev[0] > 20  # text and tables, not an empty or error page
    # The lead box (green: measured) is on the first screen: its border colour is there.
    rgb = Image.open(shot).convert("RGB")
    assert any(rgb.getpixel((x, y)) == (0x2A, 0x7D, 0x2A) for x in range(30, 60) for y in range(100, 400))


def test_plot_legends_stay_off_the_data() -> None:
    """Every plot the report embeds keeps its legend outside the axes, whatever the number of families."""
    from planner.recommend.sweep import ANY_FAMILY, QualityPoint, QualitySweep, RateCurve, RateSweep
    from planner.report.plots import gpus_figure, legend_overlaps_axes, quality_figure, rate_figure
    from planner.solver.plan import Baseline, Plan

    rates = [1.0, 2.0, 5.0, 10.0, 20.0]
    curves = [RateCurve(ANY_FAMILY, rates, [1e-3] * 5)]
    curves += [RateCurve(f"family-{i}", rates, [1e-3 * (1 + i / 10)] * 5, estimated=i % 2 == 0) for i in range(13)]
    assert not legend_overlaps_axes(rate_figure(RateSweep("w", 10.0, curves), frozenset({"family-1"})))
    points = [QualityPoint(None, 1e-3, 0.9, True, "m", "dn=bf16"), QualityPoint(0.95, 2e-3, 0.97, False, "m", "x")]
    assert not legend_overlaps_axes(quality_figure(QualitySweep("w", "ssim_image", points, points[0])))
    plan = Plan(
        feasible=True,
        total_cost_per_hour=10.0,
        gpus={"a": 3, "b": 1},
        workloads=(),
        baselines=tuple(Baseline(f"base-{i}", "", True, 20.0, 0.5, {"a": 5 + i}) for i in range(4)),
    )
    assert not legend_overlaps_axes(gpus_figure(plan))
