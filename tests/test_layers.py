"""Layers point one way (flows -> tasks -> ppo) and importing does no work.

The import graph is read from the sources with ``ast`` (every ``import``, also those inside functions, and
``importlib.import_module``/``__import__`` of a literal name), so an import hidden in a function counts.
What importing does is checked in fresh interpreters: the served model's ``ppo.policy`` imports no JAX.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT


def _imports(path: Path) -> set[str]:
    """Top-level package of every absolute import in ``path``."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__"):
                found.add(node.args[0].value)
    return {name.split(".")[0] for name in found}


def _offending(package: str, forbidden: set[str]) -> dict[str, list[str]]:
    """{file: forbidden packages it imports} for every module of ``package``."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        bad = sorted(name for name in _imports(path) if name in forbidden)
        if bad:
            out[str(path.relative_to(ROOT))] = bad
    return out


def test_the_import_check_sees_imports_inside_functions(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        "import os\n\ndef f():\n    from flows.cli import app\n    import prefect.flows\n"
        "    import importlib\n    importlib.import_module('tasks.train')\n"
        "    from . import sibling\n"
    )
    assert _imports(src) == {"os", "flows", "prefect", "importlib", "tasks"}


def test_ppo_imports_no_orchestration():
    """The core package never imports Prefect (nor prefect-ray), the flows or the tasks."""
    assert _offending("ppo", {"prefect", "prefect_ray", "flows", "tasks"}) == {}


def test_only_ppo_tracking_imports_mlflow():
    """MLflow has one adapter in the core: ``ppo/tracking/`` (store, logger, registry, served model)."""
    outside = {
        f: bad for f, bad in _offending("ppo", {"mlflow"}).items() if not f.startswith("ppo/tracking/")
    }
    assert outside == {}, "only ppo/tracking/ may import mlflow"
    assert _offending("ppo/tracking", {"mlflow"}), "the check must see the adapter's own imports"


def test_tasks_never_import_flows():
    assert _offending("tasks", {"flows"}) == {}, "tasks/ may import Prefect and ppo, never flows/"


def _fresh(code: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_served_policy_imports_no_jax():
    _fresh(
        "import sys\nimport ppo.policy\n"
        "assert 'jax' not in sys.modules and 'flax' not in sys.modules, sorted(sys.modules)\n"
        "import ppo\nassert 'jax' not in sys.modules\n"
        "from ppo import CartPoleWrapper, PPOAgent, PPOTrainer\n"  # the reference API, imported on use
        "assert PPOTrainer.__module__ == 'ppo.trainer' and PPOAgent.__module__ == 'ppo.agent'\n"
        "assert CartPoleWrapper.__module__ == 'ppo.envs'\n"
    )
    _fresh(
        "import sys\nimport ppo.tracking.model\n"  # the served model's module: MLflow and NumPy only
        "assert 'jax' not in sys.modules and 'flax' not in sys.modules\n"
    )


def test_the_code_version_covers_subpackages(tmp_path, monkeypatch):
    """A change to any source of ``ppo`` or ``tasks``, sub-packages included, invalidates every cache."""
    import ppo.checkpoint as sources
    import tasks._cache

    assert tasks._cache.code_version is sources.code_version  # one digest for caches and checkpoints

    (tmp_path / "tasks").mkdir()
    store = tmp_path / "ppo" / "tracking" / "store.py"
    store.parent.mkdir(parents=True)
    monkeypatch.setattr(sources, "SOURCE_ROOT", tmp_path)
    versions = []
    try:
        for text in ("a = 1\n", "a = 2\n"):
            store.write_text(text)
            sources.code_version.cache_clear()
            versions.append(sources.code_version())
    finally:
        sources.code_version.cache_clear()
    assert versions[0] != versions[1]


def test_imports_do_no_work():
    """Importing the tasks hashes no source; importing the sweep flow imports no Ray; importing the
    tracking package (or its probe) imports no MLflow and leaves MLflow's HTTP settings alone until it
    connects."""
    _fresh(
        "import os, sys\nimport tasks, tasks.train, tasks.promotion, tasks.sweep\n"
        "assert tasks._cache.code_version.cache_info().currsize == 0\n"
        "import flows.sweep, flows.cli\n"
        "assert 'ray' not in sys.modules and 'prefect_ray' not in sys.modules\n"
        "import ppo.tracking, ppo.tracking.probe\nassert 'mlflow' not in sys.modules\n"
        "assert 'MLFLOW_HTTP_REQUEST_MAX_RETRIES' not in os.environ\n"
        "ppo.tracking.check_reachable('sqlite:///unused.db')\n"
        "assert os.environ['MLFLOW_HTTP_REQUEST_MAX_RETRIES'] == '2'\n"
    )


@pytest.mark.parametrize(
    "module,commands",
    [
        ("ppo.cli", ["train", "evaluate", "serve", "record"]),
        ("flows.cli", ["train", "evaluate", "serve", "record", "pipeline", "sweep", "promote", "ui"]),
    ],
)
def test_the_ppo_command_is_the_core_plus_orchestration(module, commands):
    import importlib

    import typer

    group = typer.main.get_command(importlib.import_module(module).app)
    assert list(group.commands) == commands


def test_the_console_script_is_the_full_command():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"ppo": "flows.entry:main"}
