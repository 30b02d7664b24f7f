"""Prefect tasks of the pipeline: thin wrappers over ``ppo`` (no RL math here)."""

from tasks.pipeline import (
    CODE_VERSION,
    challenger,
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

__all__ = ["CODE_VERSION", "validate_config", "challenger", "train", "evaluate_candidate", "fetch_version", "gate",
           "report", "register", "promote", "outcome"]
