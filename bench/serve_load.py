"""Load on the served champion: ``ppo serve`` (our lean ASGI app) against MLflow's scoring server as shipped
(``mlflow models serve --env-manager local``), same model, both on 127.0.0.1 only.

Cells: 1, 8 and 32 concurrent clients x batch 1 and 256, ``--seconds`` each (default 10), then a soak of
``--soak`` seconds (default 60) at 8 clients, batch 1, sampling the server's RSS every second. One JSON line
per cell: req/s, p50/p99 latency (ms), errors (non-200 answers and failed connections), the server's RSS
(MiB, the process and its children). Target on a 2-core machine: >= 1,500 req/s at batch 1 with p99 <= 25
ms at 8 clients, no errors, flat memory over the soak.

The load generator is an asyncio client (uvloop when installed) over raw keep-alive HTTP/1.1 connections,
one per client, in a separate process per cell (``--client``), so that it never shares the server's
process; it writes a request once and reads the reply by its Content-Length, which costs a few
microseconds a request. On a 2-core machine it takes one core, the server the other.

    python bench/serve_load.py [--seconds 10] [--soak 60] [--no-reference]

Setup: a fresh ``$PPO_HOME`` (a temporary folder), a small CartPole policy trained for a few seconds,
registered, tagged as gate-passed and made champion (the figures do not depend on how well it plays).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "ppo-bench-serve"


# -- the load generator (runs in its own process) ----------------------------------------------------
async def _client(host: str, port: int, request: bytes, until: float, lat: list[float], errors: list[int]):
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        errors.append(1)
        return
    try:
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            lat.append(time.perf_counter() - t0)
            if status != 200:
                errors.append(status)
    except (OSError, asyncio.IncompleteReadError, ValueError):
        errors.append(1)
    finally:
        writer.close()


async def _load(url: str, clients: int, batch: int, seconds: float) -> dict:
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    obs = [[0.01 * (i % 7), -0.02, 0.03, 0.0] for i in range(batch)]
    body = json.dumps({"inputs": obs}).encode()
    request = (
        f"POST /invocations HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    lat: list[float] = []
    errors: list[int] = []
    until = time.perf_counter() + seconds
    t0 = time.perf_counter()
    await asyncio.gather(*[_client(host, int(port), request, until, lat, errors) for _ in range(clients)])
    wall = time.perf_counter() - t0
    lat.sort()

    def q(p: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None

    return {
        "requests": len(lat),
        "req_per_s": round(len(lat) / wall, 1),
        "p50_ms": q(0.5),
        "p99_ms": q(0.99),
        "errors": len(errors),
    }


def client_main(url: str, clients: int, batch: int, seconds: float) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(_load(url, clients, batch, seconds))))


# -- the driver --------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mb(pid: int) -> float:
    import psutil

    p = psutil.Process(pid)
    return round(sum(x.memory_info().rss for x in [p, *p.children(recursive=True)]) / 2**20, 1)


def _wait(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(url)


def _cell(url: str, clients: int, batch: int, seconds: float) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--client",
            url,
            "--clients",
            str(clients),
            "--batch",
            str(batch),
            "--seconds",
            str(seconds),
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _setup(home: Path) -> str:
    """Train a small CartPole policy, register it, tag it gate-passed, make it champion."""
    from ppo import tracking
    from ppo.config import build_config
    from ppo.trainer import PPOTrainer

    cfg = build_config(
        {
            "env": {"id": "CartPole-v1", "num_envs": 8},
            "ppo": {"batch_size": 128, "minibatch_size": 64, "epochs_per_update": 2},
            "train": {
                "max_env_steps": 128 * 5 * 4,
                "target_reward": 1e9,
                "updates_per_chunk": 5,
                "seeds": [0],
                "eval_episodes": 2,
            },
            "tracking": {"enabled": True},
            "registry": {"model_name": MODEL},
        }
    )
    run_id = PPOTrainer(config=cfg, enable_mlflow=True).train()["run_id"]
    version = tracking.register_model(run_id, MODEL)
    tracking.tag_version(MODEL, version, {"gate.passed": True, "gate.status": "passed"})
    tracking.set_champion(MODEL, version)
    return f"models:/{MODEL}@champion"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="per cell")
    ap.add_argument("--soak", type=float, default=60.0, help="8 clients, batch 1; 0: none")
    ap.add_argument("--clients-list", default="1,8,32")
    ap.add_argument("--batches", default="1,256")
    ap.add_argument("--no-reference", action="store_true", help="skip MLflow's scoring server")
    ap.add_argument("--client", help=argparse.SUPPRESS)
    ap.add_argument("--clients", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        return client_main(args.client, args.clients, args.batch, args.seconds)

    home = Path(tempfile.mkdtemp(prefix="ppo-bench-serve-"))
    os.environ["PPO_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    sys.path.insert(0, str(ROOT))
    uri = _setup(home)
    from ppo.tracking.store import default_tracking_uri

    env = {
        **os.environ,
        "PPO_HOME": str(home),
        "MLFLOW_TRACKING_URI": default_tracking_uri(),
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
    }
    servers = {
        "ppo-serve": lambda port: [
            sys.executable,
            "-m",
            "ppo.cli",
            "serve",
            "--model",
            uri,
            "--port",
            str(port),
        ],
        "mlflow-models-serve": lambda port: [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            uri,
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
    }
    if args.no_reference:
        servers.pop("mlflow-models-serve")
    for name, command in servers.items():
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        log = open(home / f"{name}.log", "w")
        proc = subprocess.Popen(
            command(port), env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            _wait(url, proc)
            _cell(url, 4, 1, 1.0)  # warm-up
            for batch in map(int, args.batches.split(",")):
                for clients in map(int, args.clients_list.split(",")):
                    r = _cell(url, clients, batch, args.seconds)
                    print(
                        json.dumps(
                            {
                                "server": name,
                                "clients": clients,
                                "batch": batch,
                                "seconds": args.seconds,
                                **r,
                                "rss_mb": _rss_mb(proc.pid),
                            }
                        ),
                        flush=True,
                    )
            if args.soak > 0:
                samples: list[float] = []
                client = subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--client",
                        url,
                        "--clients",
                        "8",
                        "--batch",
                        "1",
                        "--seconds",
                        str(args.soak),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                while client.poll() is None:
                    samples.append(_rss_mb(proc.pid))
                    time.sleep(1.0)
                r = json.loads(client.stdout.read().strip().splitlines()[-1])
                print(
                    json.dumps(
                        {
                            "server": name,
                            "soak": True,
                            "clients": 8,
                            "batch": 1,
                            "seconds": args.soak,
                            **r,
                            "rss_mb_first": samples[0] if samples else None,
                            "rss_mb_max": max(samples, default=None),
                            "rss_mb_last": samples[-1] if samples else None,
                            "rss_samples": len(samples),
                        }
                    ),
                    flush=True,
                )
        finally:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
            log.close()


if __name__ == "__main__":
    main()
