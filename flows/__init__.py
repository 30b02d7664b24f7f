"""Prefect flows: wiring only (train-ppo, promote-model, sweep-ppo); ``cli.py`` is the ``ppo`` command."""
