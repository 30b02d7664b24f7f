"""Finding a pipeline's results as a user would: ``ppo pipeline`` (embedded Prefect API), then ``ppo ui``,
then the Prefect UI's artifact page and the MLflow server it starts, in a real headless Chromium.

Pins: the report artifact's images load in the Prefect UI and its "Full report" link opens report.html
in the MLflow UI (not a local path); artifact keys are per registered model; the pipeline's flow run is in
the database the UI shows (one Prefect home); the MLflow UI lists the run's artifacts; the experiment is a
classic-ML one, not a GenAI traces page.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from tests.helpers import ROOT, free_port, run_pipeline, small_config

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str, body: dict | None = None, headers: dict[str, str] | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", **(headers or {})}
    )
    with DIRECT.open(request, timeout=30) as answer:
        return json.loads(answer.read())


def test_a_pipelines_results_in_ppo_ui_and_the_browser(tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI: .ci/run installs Debian's chromium package")
        pytest.skip("chromium not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    home = tmp_path / "home"
    home.mkdir()
    config = home / "small.yaml"
    gate = {"gate.min_return": 0.0, "gate.episodes": 10, "gate.min_seeds": 2, "tracking.enabled": True}
    config.write_text(yaml.safe_dump(small_config(**gate).to_dict()))
    mport, pport = free_port(), free_port()
    env = {**os.environ, "PPO_HOME": str(home), "MLFLOW_PORT": str(mport), "PREFECT_PORT": str(pport)}
    for key in ("PREFECT_HOME", "PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)  # the defaults: one Prefect home and one MLflow store under $PPO_HOME
    _, summary = run_pipeline(config, env)
    run_id, model = summary["run_id"], summary["model_name"]
    assert summary["links"]["mlflow_run"].startswith(f"http://127.0.0.1:{mport}/#/experiments/")

    ui = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "ui"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = ui.stdout.readline()  # the addresses, once both servers answer
        assert line, ui.stderr.read()[-3000:] if ui.poll() is not None else "ppo ui printed nothing"
        addresses = json.loads(line)
        assert addresses == {
            "mlflow_ui": f"http://127.0.0.1:{mport}",
            "prefect_ui": f"http://127.0.0.1:{pport}",
        }
        mlflow_ui, prefect_api = addresses["mlflow_ui"], addresses["prefect_ui"] + "/api"
        # while it runs, ppo pipeline/promote use its Prefect API (not a second one on the same database)
        found = subprocess.run(
            [sys.executable, "-c", "from flows.cli import _served_env; print(_served_env())"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert f"'PREFECT_API_URL': '{prefect_api}'" in found.stdout, found.stdout + found.stderr

        # one Prefect home: the pipeline's flow run (embedded API) is in the database the UI shows
        # the server refuses POSTs without a CSRF token (as make serve's does): fetch one, as its UI does
        token = _get(prefect_api + "/csrf-token?client=test")["token"]
        csrf = {"Prefect-Csrf-Token": token, "Prefect-Csrf-Client": "test"}
        runs = _get(prefect_api + "/flow_runs/filter", {}, csrf)
        assert [r["state_type"] for r in runs] == ["COMPLETED"], runs
        artifacts = _get(prefect_api + "/artifacts/latest/filter", {}, csrf)
        keys = {a["key"] for a in artifacts}
        assert {f"ppo-report-{model}", f"ppo-summary-{model}", f"ppo-eval-per-seed-{model}"} <= keys, keys
        assert "ppo-report" not in keys  # no key shared by every model
        # live training progress, per chunk: this run spent its whole env-step budget
        training = next(a for a in artifacts if a["key"] == f"ppo-training-{model}")
        assert training["type"] == "progress" and float(training["data"]) == 100.0, training
        report_id = next(a["latest_id"] for a in artifacts if a["key"] == f"ppo-report-{model}")

        # MLflow: the run's artifacts are listed (report included), the report is served, and the
        # experiment opens as a classic-ML experiment
        listed = _get(f"{mlflow_ui}/ajax-api/2.0/mlflow/artifacts/list?run_id={run_id}&path=report")
        names = {f["path"] for f in listed.get("files", [])}
        assert "report/report.html" in names, listed
        with DIRECT.open(f"{mlflow_ui}/get-artifact?path=report/report.html&run_uuid={run_id}") as a:
            assert b"<html" in a.read(2000).lower()
        run = _get(f"{mlflow_ui}/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]
        experiment = _get(
            f"{mlflow_ui}/api/2.0/mlflow/experiments/get?experiment_id={run['info']['experiment_id']}"
        )["experiment"]
        kind = {t["key"]: t["value"] for t in experiment.get("tags", [])}.get("mlflow.experimentKind")
        assert kind is not None and "genai" not in kind, experiment.get("tags")

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"{addresses['prefect_ui']}/artifacts/artifact/{report_id}")
            deadline = time.monotonic() + 60
            widths: list[int] = []
            while time.monotonic() < deadline:
                widths = page.evaluate(
                    "Array.from(document.images).filter(i => i.src.startsWith('data:image/'))"
                    ".map(i => i.complete ? i.naturalWidth : 0)"
                )
                if len(widths) >= 3 and all(w > 0 for w in widths):
                    break
                page.wait_for_timeout(500)
            links = page.evaluate("Array.from(document.links).map(a => a.href)")
            browser.close()
        assert len(widths) >= 3 and all(w > 0 for w in widths), widths
        full = [h for h in links if "report/report.html" in h]
        assert full and full[0].startswith(f"{mlflow_ui}/#/experiments/"), links
        assert f"/runs/{run_id}/artifacts/report/report.html" in full[0]
    finally:
        ui.terminate()  # SIGTERM: it stops its servers' sessions first (a SIGKILL would orphan them)
        ui.wait(timeout=60)
    # ppo ui stopped what it started, and no longer claims to run
    for port in (mport, pport):
        with pytest.raises(OSError):
            DIRECT.open(f"http://127.0.0.1:{port}/", timeout=2)
    assert not (home / "run" / "ui.env").exists() and not (home / "run" / "ui.pid").exists()


def test_a_servers_file_left_by_a_dead_process_is_not_trusted(tmp_path, monkeypatch):
    """serve.env / ui.env outlive a crash (or make stop of an older version): a ppo command must not send
    its runs, or auth.env's credentials, to whatever answers on that address now."""
    import http.server
    import threading

    from flows.cli import _served_env

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    (tmp_path / "api" / "health").mkdir(parents=True)  # GET /api/health answers 200 (a directory listing)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PPO_HOME", str(tmp_path / "home"))
    run = tmp_path / "home" / "run"
    run.mkdir(parents=True)
    (run / "serve.env").write_text(f"export PREFECT_API_URL=http://127.0.0.1:{server.server_port}/api\n")
    try:
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
        (run / "prefect-server.pid").write_text(dead.stdout.decode().strip())
        assert _served_env() is None  # its process is gone
        (run / "prefect-server.pid").write_text(str(os.getpid()))  # a live process: trusted
        assert _served_env() == {"PREFECT_API_URL": f"http://127.0.0.1:{server.server_port}/api"}
    finally:
        server.shutdown()
