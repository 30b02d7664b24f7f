"""Fault injection for drills and tests (``PPO_FAULTS``): a task fails, always or on its first attempts,
or holds the promotion lock a while."""

from __future__ import annotations

import os


class InjectedFault(RuntimeError):
    """Raised by :func:`fault` (fault-injection drills and tests only)."""


def fault(task_name: str) -> None:
    """Fault injection for drills: ``PPO_FAULTS="train=1,register=permanent"`` makes ``train`` fail its
    first attempt (a transient error, counted in ``$PPO_HOME/faults``) and ``register`` fail always;
    ``promote=delay:5`` makes promotion hold its lock 5 s (a slow registry, to drill concurrent
    promotions)."""
    spec = dict(item.split("=", 1) for item in os.environ.get("PPO_FAULTS", "").split(",") if "=" in item)
    if task_name not in spec:
        return
    if spec[task_name].startswith("delay:"):
        import time

        time.sleep(float(spec[task_name].split(":", 1)[1]))
        return
    if spec[task_name] == "permanent":
        raise InjectedFault(f"injected permanent fault in task {task_name!r}")
    from ppo.config import ppo_home

    counter = ppo_home() / "faults" / task_name
    counter.parent.mkdir(parents=True, exist_ok=True)
    seen = int(counter.read_text()) if counter.is_file() else 0
    if seen < int(spec[task_name]):
        from ppo import atomic

        atomic.write_text(counter, str(seen + 1))
        raise InjectedFault(f"injected transient fault in task {task_name!r} (attempt {seen + 1})")
