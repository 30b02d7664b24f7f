"""Files the project writes are replaced atomically: a full disk (or a crash) mid-write leaves the old
file intact and no temporary file behind (a torn result.json used to break every later --resume)."""

from __future__ import annotations

import errno
import os

import pytest

from ppo import atomic

pytestmark = pytest.mark.reliability


def _disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    atomic.write_text(target, '{"old": true}')
    monkeypatch.setattr(atomic.os, "fsync", _disk_full)
    with pytest.raises(OSError) as e:
        atomic.write_text(target, '{"new": true, "padding": "' + "x" * 100_000 + '"}')
    assert e.value.errno == errno.ENOSPC
    assert target.read_text() == '{"old": true}'
    assert sorted(os.listdir(tmp_path)) == ["result.json"]


def test_checkpoints_and_results_go_through_the_atomic_writer(tmp_path, monkeypatch, ppo_home):
    from ppo import PPOTrainer
    from tests.helpers import small_config

    trainer = PPOTrainer(config=small_config(**{"train.max_env_steps": 128 * 5, "train.seeds": [0]}))
    trainer.train()
    before = {p.name: p.read_bytes() for p in trainer.checkpoint_dir.iterdir()}
    assert {"checkpoint.msgpack", "result.json"} <= set(before)
    monkeypatch.setattr(atomic.os, "fsync", _disk_full)
    with pytest.raises(OSError):
        PPOTrainer(config=trainer.config).train()  # the same folder: every write fails
    after = {p.name: p.read_bytes() for p in trainer.checkpoint_dir.iterdir()}
    assert after == before  # nothing torn, nothing left behind
