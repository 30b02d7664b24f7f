"""MLflow adapter: the only place in ``ppo`` that touches MLflow, one idea per module.

* :mod:`ppo.tracking.store`: the store (``$MLFLOW_TRACKING_URI`` when set, else
  ``sqlite:///$PPO_HOME/mlflow.db`` with artifacts in ``$PPO_HOME/mlartifacts``), a checked connection,
  the client, experiments.
* :mod:`ppo.tracking.logger`: :class:`MLflowLogger` (one training run, buffered, outage-tolerant), the
  metric names, the history CSV.
* :mod:`ppo.tracking.registry`: idempotent registration per run id, alias ``champion`` get/set (gated
  versions only), what a version carries (params, run config, checkpoint), run tags, report, run URL.
* :mod:`ppo.tracking.model`: the served pyfunc model from code (``model_code.py``, no pickle); JAX-free.
* :mod:`ppo.tracking.probe`: the HTTP health probe; an unreachable server fails fast with one readable
  :class:`ServiceUnavailableError`.

``from ppo import tracking; tracking.client()`` and the other public names below are imported on first
use, so importing this package (or :mod:`ppo.tracking.probe` alone) does not import MLflow.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

# Usage telemetry off unless the user turns it on: its background sends cost ~3% of a short training run
# on 2 cores (and nothing leaves a machine without the user's say). The one default set at import: every
# module here that imports mlflow is imported after this package, and ``import mlflow`` reads it (and
# otherwise starts its telemetry client and writes an installation id under ~/.config/mlflow).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow's INFO lines ("Creating initial MLflow database tables...", "Validating input example against
# model signature") said nothing a user could act on, on every run; its warnings and errors still show.
# Read once by ``import mlflow``; MLFLOW_LOGGING_LEVEL=INFO brings them back.
os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")

_MODULES = {
    "store": (
        "default_tracking_uri",
        "default_artifact_root",
        "check_reachable",
        "connect",
        "client",
        "get_or_create_experiment",
    ),
    "logger": ("MLflowLogger", "METRIC_KEYS", "history_csv"),
    "registry": (
        "CHAMPION",
        "UngatedVersionError",
        "find_version",
        "register_model",
        "set_champion",
        "get_champion",
        "champion_info",
        "load_model",
        "version_params",
        "fetch_version_run",
        "run_start_ms",
        "set_run_tags",
        "tag_version",
        "log_report",
        "run_url",
        "artifact_url",
        "version_url",
        "ui_base",
        "DEFAULT_UI_PORT",
    ),
    "model": ("log_policy_model",),
    # the function ``probe`` shares its module's name: import it from ppo.tracking.probe
    "probe": ("ServiceUnavailableError",),
}
_EXPORTS = {name: f"ppo.tracking.{module}" for module, names in _MODULES.items() for name in names}

__all__ = [
    "CHAMPION",
    "DEFAULT_UI_PORT",
    "METRIC_KEYS",
    "MLflowLogger",
    "ServiceUnavailableError",
    "UngatedVersionError",
    "champion_info",
    "check_reachable",
    "client",
    "connect",
    "default_artifact_root",
    "default_tracking_uri",
    "fetch_version_run",
    "find_version",
    "get_champion",
    "get_or_create_experiment",
    "history_csv",
    "load_model",
    "log_policy_model",
    "log_report",
    "register_model",
    "run_start_ms",
    "run_url",
    "artifact_url",
    "version_url",
    "ui_base",
    "set_champion",
    "set_run_tags",
    "tag_version",
    "version_params",
]

if TYPE_CHECKING:
    from ppo.tracking.logger import METRIC_KEYS, MLflowLogger, history_csv
    from ppo.tracking.model import log_policy_model
    from ppo.tracking.probe import ServiceUnavailableError
    from ppo.tracking.registry import (
        CHAMPION,
        DEFAULT_UI_PORT,
        UngatedVersionError,
        artifact_url,
        champion_info,
        fetch_version_run,
        find_version,
        get_champion,
        load_model,
        log_report,
        register_model,
        run_start_ms,
        run_url,
        set_champion,
        set_run_tags,
        tag_version,
        ui_base,
        version_params,
        version_url,
    )
    from ppo.tracking.store import (
        check_reachable,
        client,
        connect,
        default_artifact_root,
        default_tracking_uri,
        get_or_create_experiment,
    )


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ppo.tracking' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
