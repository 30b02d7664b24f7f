"""Prefect flows: wiring only (train-ppo, promote-model)."""
