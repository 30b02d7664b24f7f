"""A write that does not fit (issue 16, item 10): one ``error:`` line, nothing lost.

How the disk is made full without root: the training subprocess runs under ``RLIMIT_FSIZE`` (set with
``resource.setrlimit`` in ``preexec_fn``), a per-process cap on the size of any file it writes. A write past
it fails with ``EFBIG`` (Python ignores the ``SIGXFSZ`` that comes with it), which the project handles
exactly as ``ENOSPC``/``EDQUOT``. The cap sits between the MLflow store's size (which must keep working so
the run can be marked FAILED) and the checkpoint's size, so the checkpoint is the write that does not fit.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest
import yaml

from ppo import tracking
from tests.helpers import small_config

pytestmark = pytest.mark.reliability


def _file_size_limit(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_checkpoint_that_does_not_fit_keeps_the_old_one_and_fails_the_run(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("PPO_HOME", str(home))
    cfg = small_config(
        **{
            "ppo.hidden_sizes": [384, 384],  # a checkpoint of a few MB, larger than the store
            "train.seeds": [0],
            "train.checkpoint_dir": "ck",
            "train.max_env_steps": 128 * 5 * 2,
            "tracking.enabled": True,
        }
    )
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    env = {**os.environ, "PPO_HOME": str(home)}
    cmd = [sys.executable, "-m", "ppo.cli", "train", "-c", str(path)]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    ck = home / "ck"
    before = {p.name: p.read_bytes() for p in ck.iterdir()}
    store = home / "mlflow.db"
    limit = store.stat().st_size + 512 * 1024
    assert len(before["checkpoint.msgpack"]) > limit, "the checkpoint must be the write that does not fit"

    full = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(limit)
    )

    assert full.returncode == 1, full.stderr[-3000:]
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in full.stderr, full.stderr[-3000:]
    assert "could not write" in errors[0] and "checkpoint.msgpack" in errors[0], errors[0]
    assert "file size limit" in errors[0] and "is kept" in errors[0], errors[0]
    # nothing lost, nothing left behind: the previous checkpoint and result, byte for byte, no temporary
    # (mlflow_run.json names the new run, as any fresh run's does)
    after = {p.name: p.read_bytes() for p in ck.iterdir()}
    assert sorted(after) == sorted(before)
    for name in ("checkpoint.msgpack", "result.json"):
        assert after[name] == before[name], name
    assert not [p for p in home.rglob("*.tmp")]
    # the run that could not checkpoint is FAILED, not left RUNNING
    runs = tracking.client().search_runs(
        [tracking.client().get_experiment_by_name(cfg.experiment_name).experiment_id],
        order_by=["attributes.start_time DESC"],
    )
    assert [r.info.status for r in runs] == ["FAILED", "FINISHED"]
    assert "could not write" in runs[0].data.tags["error"]


def test_the_pipeline_does_not_retry_a_train_task_whose_disk_is_full(ppo_home, monkeypatch):
    """Under Prefect, ``train`` is retried on errors, but not on a full disk: the retry would fail on the same
    write. Here the disk is made full in-process by failing the atomic writer's fsync with ``ENOSPC``."""
    import errno

    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    from ppo import atomic
    from ppo.atomic import DiskFullError
    from tasks import train

    def disk_full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    cfg = small_config(**{"train.seeds": [0], "tracking.enabled": True})
    calls: list[int] = []

    @flow(name="train-only")
    def train_only() -> dict:
        calls.append(1)
        return train(cfg.to_dict(), cfg.config_hash())

    from ppo.tracking.store import connect

    connect()  # the MLflow store exists before the disk fills (its creation fsyncs too)
    monkeypatch.setattr(atomic.os, "fsync", disk_full)
    with prefect_test_harness(server_startup_timeout=120):
        state = train_only(return_state=True)
        assert state.is_failed()
        with pytest.raises(DiskFullError, match="no space left on device: .* bytes needed, .* free in"):
            state.result()
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        with get_client(sync_client=True) as client:
            (task_run,) = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            )
    assert task_run.run_count == 1, "a full disk was retried"
    assert not list(ppo_home.rglob("*.tmp"))
