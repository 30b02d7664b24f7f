"""Signals and crashes of the real commands (issue 16, items 7 and 9).

Each test starts ``ppo pipeline`` or ``ppo train`` as a process on a fresh ``$PPO_HOME``, waits for the
first checkpoint, then sends what a terminal, a CI runner or the OOM killer sends: Ctrl-C to the whole
process group, SIGTERM to the process, SIGKILL. It checks what the user is left with: the exit code and
how fast it came, what was printed after the signal, the checkpoint, the MLflow run's status (read from
the sqlite store), the flow run's state (read from the embedded Prefect database) and leftover processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.helpers import ROOT, small_config

pytestmark = pytest.mark.reliability

#: what a command may print after the signal: its one ``interrupted: ...`` line, and nothing like this
NOISE = ("Traceback", "Error", "Exception")


def _config(tmp_path: Path, name: str = "cfg.yaml", chunks: int = 3000) -> Path:
    """A tracked one-seed config that checkpoints every chunk and trains long enough to be interrupted."""
    cfg = small_config(
        **{
            "train.seeds": [0],
            "train.updates_per_chunk": 5,
            "train.max_env_steps": 128 * 5 * chunks,
            "train.eval_frequency": 10**6,
            "gate.min_return": 0,
            "gate.min_seeds": 1,
            "gate.episodes": 5,
            "tracking.enabled": True,
        }
    )
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def _env(tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "PPO_HOME": str(tmp_path / "home"), "PREFECT_HOME": str(tmp_path / "prefect")}
    env["PYTHONFAULTHANDLER"] = "1"  # a command that hangs is sent SIGABRT: its threads' stacks go to stderr
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PPO_FAULTS"):
        env.pop(key, None)
    return env


class Command:
    """A ``ppo`` command in its own process group (as a shell job is), its stderr in a file."""

    def __init__(self, tmp_path: Path, *args: str, log: str = "stderr.log") -> None:
        self.home = tmp_path / "home"
        self.stderr_path = tmp_path / log
        self.stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", *args],
            env=_env(tmp_path),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=self.stderr,
            start_new_session=True,
        )
        self.mark = 0

    def wait_for_checkpoint(self, timeout: float = 120.0) -> Path:
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = list(self.home.rglob("checkpoint.msgpack"))
            if found:
                time.sleep(0.5)  # a few more chunks: the signal lands mid-training
                return found[0]
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.tail()}"
            time.sleep(0.1)
        raise AssertionError(f"no checkpoint after {timeout} s: {self.tail()}")

    def family(self) -> list[psutil.Process]:
        me = psutil.Process(self.proc.pid)
        return [me, *me.children(recursive=True)]

    def signal(self, sig: int, group: bool = False) -> float:
        """Send ``sig`` (to the process group with ``group``); returns the time it was sent."""
        assert self.proc.poll() is None, f"exited early {self.proc.returncode}: {self.tail()}"
        self.stderr.flush()
        self.mark = self.stderr_path.stat().st_size
        if group:
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        return time.time()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)  # faulthandler prints where every thread is stuck
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            late = self.after()[-12000:]
            raise AssertionError(f"still running {timeout} s after the signal: {late}") from None

    def after(self) -> str:
        """What the command printed on stderr after the signal."""
        with open(self.stderr_path, errors="replace") as f:
            f.seek(self.mark)
            return f.read()

    def tail(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.stderr.close()


def _alive(procs: list[psutil.Process], within: float = 10.0) -> list[str]:
    """The processes of ``procs`` still running after ``within`` seconds (zombies count as gone)."""
    deadline = time.time() + within
    while True:
        left = []
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{p.pid} {' '.join(p.cmdline()[:6])}")
            except psutil.NoSuchProcess:
                pass
        if not left or time.time() > deadline:
            return left
        time.sleep(0.2)


def _reap(procs: list[psutil.Process]) -> None:
    """Kill what a failed test left behind (the command's family only)."""
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _mlflow_statuses(home: Path) -> list[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return [r.info.status for r in runs]


def _flow_runs(tmp_path: Path) -> list[tuple[str, str]]:
    """(flow run name, state type) of every flow run in the embedded Prefect database, oldest first."""
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        return list(db.execute("SELECT name, state_type FROM flow_run ORDER BY created"))


def _tags(tmp_path: Path) -> tuple[list[list[str]], list[list[str]]]:
    """The tags of every flow run and of every task run in the embedded Prefect database."""
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        flows = [json.loads(t) for (t,) in db.execute("SELECT tags FROM flow_run ORDER BY created")]
        tasks = [json.loads(t) for (t,) in db.execute("SELECT tags FROM task_run ORDER BY created")]
    return flows, tasks


def _one_line(text: str, sig_name: str) -> None:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) <= 2, f"{len(lines)} lines after {sig_name}:\n{text[-3000:]}"
    assert any(line.startswith("interrupted:") for line in lines), text[-3000:]
    assert not any(word in text for word in NOISE), text[-3000:]


def _interrupt_pipeline(tmp_path, sig: int, *, group: bool) -> tuple:
    """Start ``ppo pipeline``, send ``sig`` once its first checkpoint exists, wait for it to end; return
    (exit code, seconds it took, its output after the signal, the checkpoint, processes left alive)."""
    cmd, family = Command(tmp_path, "pipeline", "-c", str(_config(tmp_path))), []
    try:
        ckpt = cmd.wait_for_checkpoint()
        family = cmd.family()
        assert len(family) >= 2, "no embedded Prefect server under ppo pipeline"
        sent = cmd.signal(sig, group=group)
        code = cmd.wait(timeout=60)
        took = time.time() - sent
        left = _alive(family)
    finally:
        cmd.close()
        _reap(family)
    return code, took, cmd.after(), ckpt, left, cmd.home


def test_ctrl_c_on_pipeline_stops_within_seconds_with_one_line(tmp_path):
    # a terminal's Ctrl-C: SIGINT to the whole process group
    code, took, after, ckpt, left, home = _interrupt_pipeline(tmp_path, signal.SIGINT, group=True)
    assert code == 130, after[-3000:]
    assert took < 15, f"{took:.1f} s to stop; its output after the signal:\n{after[-3000:]}"
    _one_line(after, "Ctrl-C")
    assert ckpt.is_file()
    assert _mlflow_statuses(home) == ["KILLED"]
    assert [state for _, state in _flow_runs(tmp_path)] in (["CRASHED"], ["CANCELLED"])
    assert left == []


def test_sigterm_of_pipeline_ends_the_flow_run_and_its_server(tmp_path):
    # `kill PID`, a CI runner's cancel
    code, took, after, ckpt, left, home = _interrupt_pipeline(tmp_path, signal.SIGTERM, group=False)
    assert code == 143, after[-3000:]
    assert took < 15, f"{took:.1f} s to stop; its output after the signal:\n{after[-3000:]}"
    _one_line(after, "SIGTERM")
    assert ckpt.is_file()
    assert _mlflow_statuses(home) == ["KILLED"]
    assert [state for _, state in _flow_runs(tmp_path)] == ["CRASHED"]
    assert left == []


def test_kill_9_of_pipeline_leaves_no_server_and_the_next_run_crashes_its_flow_run(tmp_path):
    cmd, family = Command(tmp_path, "pipeline", "-c", str(_config(tmp_path))), []
    try:
        cmd.wait_for_checkpoint()
        family = cmd.family()
        assert len(family) >= 2, "no embedded Prefect server under ppo pipeline"
        cmd.signal(signal.SIGKILL)  # the pipeline process only, as the OOM killer does
        assert cmd.wait(timeout=30) == -signal.SIGKILL
        # its embedded server dies with it (it used to live on, orphaned, for good)
        assert _alive(family) == [], "the embedded Prefect server outlived ppo pipeline"
    finally:
        cmd.close()
        _reap(family)
    assert [state for _, state in _flow_runs(tmp_path)] == ["RUNNING"]
    # the process tag that proves it dead is on the flow run only: a tagged task run would ask the API for
    # a concurrency slot of the tag before it starts (a round trip per task)
    flow_tags, task_tags = _tags(tmp_path)
    assert len(flow_tags) == 1 and any(t.startswith("ppo-proc:") for t in flow_tags[0]), flow_tags
    assert task_tags and all(t == [] for t in task_tags), task_tags
    # the next ppo command on this PPO_HOME (here a promote of a version that does not exist: quick) finds
    # the dead process's flow run and ends it Crashed
    nxt = Command(tmp_path, "promote", "--version", "7", "-c", str(_config(tmp_path)), log="next.log")
    try:
        code = nxt.wait(timeout=120)
    finally:
        nxt.close()
    assert code == 1, nxt.tail()
    assert "marked Crashed" in nxt.stderr_path.read_text(), nxt.tail()
    states = _flow_runs(tmp_path)
    assert [state for _, state in states] == ["CRASHED", "FAILED"], states


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_of_ppo_train_marks_the_mlflow_run_killed(tmp_path, sig, code):
    cmd = Command(tmp_path, "train", "-c", str(_config(tmp_path)), "--mlflow")
    try:
        ckpt = cmd.wait_for_checkpoint()
        sent = cmd.signal(sig, group=sig == signal.SIGINT)  # Ctrl-C reaches the group, `kill` the process
        got = cmd.wait(timeout=60)
        took = time.time() - sent
    finally:
        cmd.close()
    assert got == code, cmd.after()[-3000:]
    assert took < 10, f"{took:.1f} s to stop"
    _one_line(cmd.after(), signal.Signals(sig).name)
    assert ckpt.is_file()
    assert _mlflow_statuses(cmd.home) == ["KILLED"]


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_of_ppo_sweep_marks_the_sweep_and_its_trials_killed(tmp_path, sig, code):
    """An interrupted sweep leaves no MLflow run RUNNING: its trials' runs and the sweep's parent run end
    KILLED (the parent used to stay RUNNING for ever)."""
    base = _config(tmp_path)
    spec = tmp_path / "sweep.yaml"
    spec.write_text(
        yaml.safe_dump({"base": str(base), "eval_episodes": 3, "space": {"ppo.learning_rate": [1e-3, 3e-3]}})
    )
    cmd, family = Command(tmp_path, "sweep", "-s", str(spec)), []
    try:
        cmd.wait_for_checkpoint()
        family = cmd.family()
        sent = cmd.signal(sig, group=sig == signal.SIGINT)
        assert cmd.wait(timeout=60) == code, cmd.after()[-3000:]
        assert time.time() - sent < 30, cmd.after()[-3000:]
        assert _alive(family) == []
    finally:
        cmd.close()
        _reap(family)
    _one_line(cmd.after(), signal.Signals(sig).name)
    statuses = _mlflow_statuses(cmd.home)
    assert len(statuses) == 3 and set(statuses) == {"KILLED"}, statuses  # the parent and its 2 trials
