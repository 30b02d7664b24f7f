"""Prefect tasks, one module per flow: thin wrappers over ``ppo`` (no RL math here).

``tasks.train`` and ``tasks.promotion`` hold the tasks of ``train-ppo`` (and ``promote-model``),
``tasks.sweep`` those of ``sweep-ppo``; ``tasks._cache`` (code version, cache keys) and ``tasks._faults``
(fault drills) are their private helpers.
"""

from typing import Any

from tasks._cache import code_version
from tasks.promotion import fetch_version, gate, outcome, promote, register
from tasks.summary import summarize
from tasks.train import challenger, evaluate_candidate, report, train, validate_config

__all__ = [
    "CODE_VERSION",
    "code_version",
    "validate_config",
    "challenger",
    "train",
    "evaluate_candidate",
    "fetch_version",
    "gate",
    "report",
    "register",
    "promote",
    "outcome",
    "summarize",
]


def __getattr__(name: str) -> Any:
    if name == "CODE_VERSION":  # computed on first access (hashing the sources), not at import
        return code_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
