"""Prefect tasks of the pipeline: thin wrappers over ``ppo`` (no RL math here)."""

from tasks.pipeline import (
    CODE_VERSION,
    evaluate_candidate,
    evaluate_version,
    gate,
    promote,
    register,
    report,
    train,
    validate_config,
)

__all__ = ["CODE_VERSION", "validate_config", "train", "evaluate_candidate", "evaluate_version", "gate", "report", "register",
           "promote"]
