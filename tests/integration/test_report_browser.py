"""report.html seen in a real headless Chromium: every image loads, the gate table is there."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from ppo import PPOAgent
from ppo.report import write_report
from ppo.stats import gate_decision
from tests.helpers import ROOT, small_config

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_html_in_headless_chromium(tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: .ci/run installs Debian's chromium package")
        pytest.skip("chromium not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    cfg = small_config()
    rng = np.random.default_rng(0)
    history = [
        {
            "env_steps": 640 * (i + 1),
            "episode_return/seed_0": 20.0 + 10 * i + rng.normal(0, 3),
            "episode_return/seed_1": 22.0 + 9 * i + rng.normal(0, 3),
            "loss/policy": -0.01,
            "loss/value": 5.0 - i,
            "loss/entropy": 0.69 - 0.01 * i,
            "loss/approx_kl": 0.01,
            "loss/clip_fraction": 0.1,
            "grad_norm": 1.0,
        }
        for i in range(8)
    ]
    cand = rng.normal(100, 10, (2, 10))
    decision = gate_decision(cand, 0, None, min_return=50.0, margin=10.0, min_seeds=2) | {
        "champion_version": None
    }
    files = write_report(
        tmp_path,
        config=cfg,
        result={"history": history, "converged": False},
        gate=decision,
        candidate_returns=cand,
        champion_returns=None,
        agent=PPOAgent(4, 2),
        run_id="run-1",
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(f"file://{files['report_html']}")
        page.wait_for_load_state("load")
        widths = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
        gate_rows = page.locator("table#gate tr").count()
        shot = ROOT / ".ppo" / "report-screenshot.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert len(widths) == 5 and all(w > 0 for w in widths), widths  # 4 plots (performance profile too), GIF
    assert gate_rows >= 8
    assert shot.stat().st_size > 10_000
