"""MLflow models-from-code entry: MLflow executes this file to build the served model (no pickle)."""

import mlflow

from ppo.tracking.model import PPOPolicyModel

mlflow.models.set_model(PPOPolicyModel())
