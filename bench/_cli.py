"""What the benchmarks that time a ``ppo`` command share: run it as a user would, in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def timed_ppo(
    args: list[str], env: dict[str, str], ok: tuple[int, ...] = (0,)
) -> tuple[float, dict[str, Any]]:
    """``ppo <args> --json`` in a fresh interpreter (from the repository root, with ``env``): its wall
    seconds from process start to exit, and the JSON line it ends with. Exits with its stderr's tail when
    its status is not in ``ok``."""
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", *args, "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    wall = time.perf_counter() - t
    if proc.returncode not in ok:
        sys.exit(f"ppo {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])
