"""Helpers shared by the tests, imported as ``from tests.helpers import ...`` (``tests`` is a package):
a small config, free loopback ports, real servers started and stopped as subprocesses.

Importing this module changes nothing (no environment, no ``sys.path``); the session's environment is set
up by ``tests/conftest.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


#: the per-update loss figures every training logs (history keys and MLflow metric names alike)
LOSS_KEYS = ("loss/policy", "loss/value", "loss/entropy", "loss/approx_kl", "loss/clip_fraction", "grad_norm")


def small_config(**overrides):
    """A tiny CartPole config shared by the fast tests (one compile per module)."""
    from ppo.config import build_config

    base = {
        "env": {"id": "CartPole-v1", "num_envs": 8},
        "ppo": {"batch_size": 128, "minibatch_size": 64, "epochs_per_update": 2, "learning_rate": 1e-3},
        "train": {
            "max_episodes": 10**6,
            "max_env_steps": 128 * 5 * 6,
            "target_reward": 1e9,
            "convergence_window": 10,
            "eval_frequency": 40,
            "eval_episodes": 3,
            "updates_per_chunk": 5,
            "checkpoint_every": 1,
            "seeds": [0, 1],
        },
        "tracking": {"enabled": False},
    }
    return build_config(base, overrides)


def tiny_breakout_config():
    """A few updates of Breakout-MinAtar with a small CNN, tracked: enough to log a servable image model."""
    from ppo.config import build_config

    return build_config(
        {
            "env": {"id": "Breakout-MinAtar", "num_envs": 8},
            "ppo": {"batch_size": 128, "minibatch_size": 64, "conv_channels": [8], "hidden_sizes": [32]},
            "train": {"max_env_steps": 256, "seeds": [0], "updates_per_chunk": 2, "eval_episodes": 2},
        }
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def venv_env(**extra: str) -> dict[str, str]:
    """The current environment with this interpreter's bin/ first on PATH (mlflow/uvicorn/prefect)."""
    import sys

    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), **extra}


def wait_http(url: str, timeout: float = 90.0, proc=None) -> None:
    import time
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


class Background:
    """A server subprocess bound to 127.0.0.1, logging to a file, stopped (process group) on exit."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None, cwd: str | None = None):
        import subprocess

        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            args,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env or venv_env(),
            cwd=cwd,
            start_new_session=True,
        )
        self.log_path = log

    def stop(self) -> None:
        import signal
        import subprocess

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()

    def tail(self, n: int = 3000) -> str:
        return self.log_path.read_text()[-n:]


def start_mlflow_server(directory: Path, port: int | None = None) -> tuple[Background, str]:
    """A real ``mlflow server`` on 127.0.0.1 (sqlite backend + artifact folder in ``directory``),
    answering."""
    import sys

    port = port or free_port()
    server = Background(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{directory / 'mlflow.db'}",
            "--artifacts-destination",
            str(directory / "artifacts"),
            "--workers",
            "1",
        ],
        directory / f"server-{port}.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/health", proc=server.proc)
    except BaseException:
        server.stop()
        raise
    return server, url


def serve_team(home: Path, **extra: str) -> dict[str, str]:
    """``scripts/serve.sh`` (prefect server, worker, deployments, mlflow server) on free loopback ports;
    returns the environment a client of it uses."""
    import subprocess
    import sys

    env = venv_env(
        PPO_HOME=str(home),
        PREFECT_PORT=str(free_port()),
        MLFLOW_PORT=str(free_port()),
        PPO_BIN=str(Path(sys.executable).parent),
        **extra,
    )
    env.pop("PREFECT_HOME", None)
    env.pop("PPO_FAULTS", None)
    up = subprocess.run(
        ["bash", str(ROOT / "scripts" / "serve.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    for line in (home / "run" / "serve.env").read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        env[key] = value
    env["PREFECT_HOME"] = str(home / "prefect")
    return env


def stop_team(home: Path, env: dict[str, str] | None) -> None:
    """``scripts/stop.sh``; asserts that everything serve.sh started is gone."""
    import subprocess

    subprocess.run(
        ["bash", str(ROOT / "scripts" / "stop.sh")], env=env or venv_env(PPO_HOME=str(home)), timeout=120
    )
    for name in ("worker", "mlflow-server", "prefect-server"):
        assert not (home / "run" / f"{name}.pid").exists()


def prefect_cli(env: dict[str, str], *args: str, timeout: float = 420):
    import subprocess
    import sys

    return subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def register_passed(run_id: str, model_name: str = "ppo-cartpole") -> str:
    """Register a trained run as if it had passed the pipeline's gate (tests that only need a servable
    champion-eligible version, without running the flow)."""
    from ppo import tracking

    version = tracking.register_model(run_id, model_name)
    tracking.tag_version(model_name, version, {"gate.passed": True, "gate.status": "passed"})
    return version


def run_pipeline(config: Path, env: dict[str, str], *args: str, code: int = 0, timeout: float = 900):
    """``ppo pipeline -c config [args]`` in a subprocess (stdout captured: it ends with the JSON result);
    asserts its exit status; returns ``(completed process, the JSON result)``."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "pipeline", "-c", str(config), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert out.returncode == code, out.stderr[-3000:]
    return out, json.loads(out.stdout.strip().splitlines()[-1])
