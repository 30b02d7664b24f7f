"""Prefect tasks of the pipeline: thin wrappers over ``ppo`` (no RL math here)."""

from typing import Any

from tasks.pipeline import (
    challenger,
    code_version,
    evaluate_candidate,
    fetch_version,
    gate,
    outcome,
    promote,
    register,
    report,
    train,
    validate_config,
)

__all__ = ["CODE_VERSION", "code_version", "validate_config", "challenger", "train", "evaluate_candidate",
           "fetch_version", "gate", "report", "register", "promote", "outcome"]


def __getattr__(name: str) -> Any:
    if name == "CODE_VERSION":  # computed on first access (hashing the sources), not at import
        return code_version()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
