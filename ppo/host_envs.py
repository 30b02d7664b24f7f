"""The host path's real envs (:mod:`ppo.host_program`), stepped on every core.

Every training seed has ``num_envs`` copies of the real env. Stepping them is the host path's main cost
(LunarLander: ~50 us of Python and Box2D per env step, against ~0.3 ms per step for the jitted policy
call of all of them), and Python steps them on one core. So the (seed, env) copies are split into
contiguous parts: this process steps the first part while worker processes (``python -m
ppo.host_envs``, one per further part) step theirs at the same time. Each part holds one gymnasium
``SyncVectorEnv`` per seed it touches (same-step autoreset, :func:`make_vector_env`), and every env is
seeded on its own, so how the envs are split changes no number: a run with workers equals one without,
bit for bit (tests/test_host_envs.py).

Workers: ``PPO_HOST_WORKERS`` (default: one per core beyond the first, while every part keeps at least
``MIN_ENVS_PER_PART`` envs; ``0`` steps everything here). A worker runs in a process group of its own
and ignores Ctrl-C (the command decides what an interrupt stops); it exits when its parent closes it or
dies (the end of its input). An env a worker cannot create (say one registered at run time in the
caller's own script) makes the envs fall back to this process, with a one-line note. The training
program closes its envs after each run (:meth:`ppo.runtime.Runtime.release`).

"Bit for bit" holds for envs that draw from their own ``np_random`` (every gymnasium env does); a user
env drawing from the global ``random``/``np.random`` would see other draws in a worker.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
from typing import Any, BinaryIO

import numpy as np

#: envs per part below which a worker costs about what it saves: waking a worker and hearing back costs
#: ~0.2 ms per step on this 2-core VM. Measured (LunarLander, ms per step of all envs, alone vs one worker):
#: 16 envs 0.60 vs 0.58, 32 envs 1.13 vs 0.84, 80 envs (5 seeds x 16) 3.05 vs 1.90
MIN_ENVS_PER_PART = 16


def make_vector_env(env_id: str, num_envs: int, max_steps: int) -> Any:
    """``num_envs`` copies of the real env in a ``SyncVectorEnv`` with same-step autoreset (a finished
    episode's final observation in the info). gymnasium's native vectorised envs (CartPole's) reset on the
    next step instead, so they are not used: one semantics for every env."""
    import gymnasium as gym

    from ppo.envs import make_gymnasium_env

    return gym.vector.SyncVectorEnv(
        [lambda: make_gymnasium_env(env_id, max_steps) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )


def default_workers(total_envs: int) -> int:
    """``PPO_HOST_WORKERS``, else one per core beyond the first, as long as every part keeps
    ``MIN_ENVS_PER_PART`` envs."""
    value = os.environ.get("PPO_HOST_WORKERS", "").strip()
    if value:
        try:
            workers = int(value)
        except ValueError:
            raise ValueError(f"PPO_HOST_WORKERS must be a whole number >= 0, got {value!r}") from None
        if workers < 0:
            raise ValueError(f"PPO_HOST_WORKERS must be a whole number >= 0, got {value!r}")
        return min(workers, total_envs - 1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(0, min(cores - 1, total_envs // MIN_ENVS_PER_PART - 1))


#: one part's share of one seed: (seed index, first env, end env)
Slot = tuple[int, int, int]


def split(num_seeds: int, num_envs: int, parts: int) -> list[list[Slot]]:
    """The (seed, env) copies in ``parts`` contiguous, near-equal parts, each as its seeds' env ranges."""
    total = num_seeds * num_envs
    bounds = [round(k * total / parts) for k in range(parts + 1)]
    out: list[list[Slot]] = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        slots = []
        for i in range(lo // num_envs, (hi - 1) // num_envs + 1):
            start, stop = max(lo, i * num_envs) - i * num_envs, min(hi, (i + 1) * num_envs) - i * num_envs
            if stop > start:
                slots.append((i, start, stop))
        out.append(slots)
    return out


class _Part:
    """One part's vector envs (one per slot), stepped in the process that holds it."""

    def __init__(self, env_id: str, max_steps: int, slots: list[Slot]) -> None:
        self.slots = slots
        self.venvs = [make_vector_env(env_id, stop - start, max_steps) for _, start, stop in slots]

    def reset(self, seeds: list[list[int]]) -> list[np.ndarray]:
        """First observations per slot; ``seeds[i]`` are seed ``i``'s env seeds."""
        out = []
        for (i, start, stop), venv in zip(self.slots, self.venvs, strict=True):
            obs, _ = venv.reset(seed=seeds[i][start:stop])
            out.append(np.asarray(obs, np.float32))
        return out

    def step(self, actions: list[np.ndarray], go: list[bool]) -> list[tuple | None]:
        """Per slot ``(next_obs, final_obs, rewards, terminated, truncated)``, or ``None`` for a frozen
        seed's slot (its envs do not move)."""
        out: list[tuple | None] = []
        for (i, _, _), venv, action in zip(self.slots, self.venvs, actions, strict=True):
            if not go[i]:
                out.append(None)
                continue
            o, r, term, trunc, info = venv.step(action)
            obs = np.asarray(o, np.float32)
            final = obs.copy()
            if "_final_obs" in info:
                for j in np.flatnonzero(info["_final_obs"]):
                    final[j] = np.asarray(info["final_obs"][j], np.float32)
            out.append((obs, final, np.asarray(r, np.float32), np.asarray(term), np.asarray(trunc)))
        return out

    def close(self) -> None:
        for venv in self.venvs:
            venv.close()


# ------------------------------------------------------------------------------------- the wire
_MAX_MESSAGE = 1 << 34  # 16 GiB: more than any step's arrays; a larger length is a garbled stream


def _send(stream: BinaryIO, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _receive(stream: BinaryIO) -> Any:
    """The next message, or ``None`` at the end of the stream."""
    head = stream.read(8)
    if len(head) < 8:
        return None
    (size,) = struct.unpack("<Q", head)
    if size > _MAX_MESSAGE:
        raise WorkerError(f"a host env worker's reply is garbled (a {size}-byte message announced)")
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


class WorkerError(RuntimeError):
    """A worker process failed (its message says how) or went away."""


class _Worker:
    """A part stepped in a child process (``python -m ppo.host_envs``)."""

    def __init__(self, env_id: str, max_steps: int, slots: list[Slot]) -> None:
        self.slots = slots
        # this process's modules (a user's env package too); -P: not the working directory's first, where a
        # folder named ppo/ would shadow this package
        path = os.pathsep.join(p for p in sys.path if isinstance(p, str) and p)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-P", "-m", "ppo.host_envs"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": path},
                process_group=0,  # Ctrl-C and a group's SIGTERM are the parent's to handle; EOF ends it
            )
        except OSError as e:
            raise WorkerError(f"no worker process could start: {e}") from None
        self.request("open", (env_id, max_steps, slots))

    def request(self, op: str, payload: Any) -> None:
        try:
            _send(self.process.stdin, (op, payload))  # type: ignore[arg-type]
        except (BrokenPipeError, ValueError):  # ValueError: its pipe was closed
            raise self._ended() from None

    def reply(self) -> Any:
        message = _receive(self.process.stdout)  # type: ignore[arg-type]
        if message is None:
            raise self._ended()
        status, value = message
        if status == "error":
            raise WorkerError(value)
        return value

    def _ended(self) -> WorkerError:
        try:
            code = self.process.wait(timeout=1)
        except subprocess.TimeoutExpired:
            code = None
        return WorkerError(f"a host env worker (pid {self.process.pid}) ended (exit code {code}) mid-run")

    def close(self) -> None:
        try:
            _send(self.process.stdin, ("close", None))  # type: ignore[arg-type]
            self.process.stdin.close()  # type: ignore[union-attr]
        except (OSError, ValueError):
            pass
        # unread replies go: a worker blocked writing one (a full pipe) gets a broken pipe and ends
        self.process.stdout.close()  # type: ignore[union-attr]
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class HostEnvs:
    """Every seed's real envs, split over this process and ``workers`` worker processes (module docstring).

    ``reset`` and ``step`` take and return whole ``[seeds, envs, ...]`` arrays, as one ``SyncVectorEnv``
    per seed would."""

    def __init__(self, env_id: str, num_seeds: int, num_envs: int, max_steps: int, workers: int) -> None:
        self.num_seeds, self.num_envs = num_seeds, num_envs
        parts = split(num_seeds, num_envs, workers + 1)
        self.workers: list[_Worker] = []
        self._local: _Part | None = None
        try:
            for slots in parts[1:]:
                self.workers.append(_Worker(env_id, max_steps, slots))
            self._local = _Part(env_id, max_steps, parts[0])
            for worker in self.workers:
                worker.reply()  # its envs are made
        except BaseException as e:
            self.close()  # nothing left running behind the error
            if not isinstance(e, WorkerError):
                raise
            print(
                f"note: {env_id}'s envs all step in this process: a worker process could not make them "
                f"({str(e).strip().splitlines()[-1]})",
                file=sys.stderr,
            )
            self._local = _Part(env_id, max_steps, split(num_seeds, num_envs, 1)[0])

    @property
    def local(self) -> _Part:
        """The part this process steps."""
        if self._local is None:
            raise WorkerError("these host envs are closed")
        return self._local

    def _parts(self) -> list[Any]:
        return [self.local, *self.workers]

    def reset(self, seeds: list[list[int]]) -> np.ndarray:
        """First observations ``[seeds, envs, ...]``; ``seeds[i]`` are seed ``i``'s env seeds."""
        for worker in self.workers:
            worker.request("reset", seeds)
        rows = {}
        for part, values in zip(self._parts(), [self.local.reset(seeds)] + self._replies(), strict=True):
            rows.update({slot: v for slot, v in zip(part.slots, values, strict=True)})
        return np.stack([self._row(rows, i) for i in range(self.num_seeds)])

    def step(self, actions: np.ndarray, obs: np.ndarray, go: np.ndarray) -> tuple[np.ndarray, ...]:
        """``(next_obs, final_obs, rewards, terminated, truncated)``, each ``[seeds, envs, ...]``; a frozen
        seed's (``go[i]`` false) envs do not move: its rows are ``obs`` and zeros."""
        go_list = [bool(g) for g in go]
        for worker in self.workers:
            worker.request("step", ([actions[i, a:b] for i, a, b in worker.slots], go_list))
        local = self.local.step([actions[i, a:b] for i, a, b in self.local.slots], go_list)
        next_obs, final = obs.copy(), obs.copy()
        rewards = np.zeros((self.num_seeds, self.num_envs), np.float32)
        terminated = np.zeros((self.num_seeds, self.num_envs), bool)
        truncated = np.zeros_like(terminated)
        for part, values in zip(self._parts(), [local] + self._replies(), strict=True):
            for (i, a, b), value in zip(part.slots, values, strict=True):
                if value is not None:
                    (
                        next_obs[i, a:b],
                        final[i, a:b],
                        rewards[i, a:b],
                        terminated[i, a:b],
                        truncated[i, a:b],
                    ) = value
        return next_obs, final, rewards, terminated, truncated

    def _replies(self) -> list[Any]:
        return [worker.reply() for worker in self.workers]

    def _row(self, rows: dict[Slot, np.ndarray], i: int) -> np.ndarray:
        return np.concatenate([v for (j, _, _), v in sorted(rows.items()) if j == i])

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        self.workers = []
        if self._local is not None:
            self._local.close()
            self._local = None


def _serve() -> None:
    """A worker: open the part named by the first message, then answer ``reset``/``step`` until ``close``
    or the end of the input. Errors go back as messages (the parent raises them)."""
    import signal
    import traceback

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # its own process group already; the parent decides
    wire_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything an env prints goes to stderr, not into the replies
    wire_in = sys.stdin.buffer
    part: _Part | None = None
    try:
        while (message := _receive(wire_in)) is not None:
            op, payload = message
            if op == "close":
                break
            try:
                if op == "open":
                    part = _Part(*payload)
                    _send(wire_out, ("ok", None))
                elif op == "reset":
                    _send(wire_out, ("ok", part.reset(payload)))  # type: ignore[union-attr]
                elif op == "step":
                    _send(wire_out, ("ok", part.step(*payload)))  # type: ignore[union-attr]
                else:
                    _send(wire_out, ("error", f"unknown request {op!r}"))
            except Exception:  # noqa: BLE001 - any env error goes back to the parent, which raises it
                _send(wire_out, ("error", traceback.format_exc()))
    except BrokenPipeError:
        pass  # the parent went away
    finally:
        if part is not None:
            part.close()
        try:
            wire_out.close()
        except OSError:
            pass  # a reply the parent no longer reads


if __name__ == "__main__":
    _serve()
