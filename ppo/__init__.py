"""ppo: pure-JAX PPO with the reference training module's API.

>>> from ppo import PPOTrainer, PPOAgent, CartPoleWrapper
"""

from ppo.sharding import configure_cpu_devices

configure_cpu_devices()  # before anything starts JAX: one CPU device per core, for seeds trained together

from ppo.agent import PPOAgent  # noqa: E402
from ppo.config import Config, ConfigError, load_config  # noqa: E402
from ppo.envs import CartPoleWrapper  # noqa: E402
from ppo.trainer import NonFiniteLossError, PPOTrainer  # noqa: E402

__all__ = ["PPOTrainer", "PPOAgent", "CartPoleWrapper", "Config", "ConfigError", "load_config",
           "NonFiniteLossError", "MLflowLogger"]


def __getattr__(name: str):
    # MLflow is imported only when the logger is asked for (it costs ~1 s at start-up).
    if name == "MLflowLogger":
        from ppo.tracking import MLflowLogger

        return MLflowLogger
    raise AttributeError(name)
