"""ppo: pure-JAX PPO with the reference training module's API.

>>> from ppo import PPOTrainer, PPOAgent, CartPoleWrapper
"""

from ppo.agent import PPOAgent
from ppo.config import Config, ConfigError, load_config
from ppo.envs import CartPoleWrapper
from ppo.trainer import NonFiniteLossError, PPOTrainer

__all__ = ["PPOTrainer", "PPOAgent", "CartPoleWrapper", "Config", "ConfigError", "load_config",
           "NonFiniteLossError", "MLflowLogger"]


def __getattr__(name: str):
    # MLflow is imported only when the logger is asked for (it costs ~1 s at start-up).
    if name == "MLflowLogger":
        from ppo.tracking import MLflowLogger

        return MLflowLogger
    raise AttributeError(name)
