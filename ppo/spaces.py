"""Action spaces as plain data: what the policy head, the losses, evaluation and the served model follow.

Plain Python (no NumPy, no JAX), so the env table (:mod:`ppo.envs`), the NumPy policy (:mod:`ppo.policy`)
and the served model's ``agent.json`` share one description of "what an action is".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class ActionSpace:
    """``discrete``: ``n`` actions, an action is an int64 in ``[0, n)``.
    ``continuous``: a float32 vector of ``n`` dims, clipped to ``[low, high]`` when it steps the env (the
    policy's Gaussian sample itself is unbounded; its log-probability is of the unclipped sample, as in
    SB3 and CleanRL)."""

    kind: Literal["discrete", "continuous"]
    n: int
    low: tuple[float, ...] | None = None
    high: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("discrete", "continuous"):
            raise ValueError(f"action space kind must be 'discrete' or 'continuous', got {self.kind!r}")
        if self.n < 1:
            raise ValueError(f"an action space needs n >= 1, got {self.n}")
        if self.kind == "continuous":
            if self.low is None or self.high is None or not len(self.low) == len(self.high) == self.n:
                raise ValueError(f"a continuous action space of {self.n} dims needs low and high of {self.n}")
            if any(lo >= hi for lo, hi in zip(self.low, self.high, strict=True)):
                raise ValueError(f"action bounds must satisfy low < high, got {self.low} .. {self.high}")

    @property
    def discrete(self) -> bool:
        return self.kind == "discrete"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "n": self.n}
        if not self.discrete:
            out.update(low=list(self.low or ()), high=list(self.high or ()))
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActionSpace:
        low, high = data.get("low"), data.get("high")
        return cls(
            str(data["kind"]),  # type: ignore[arg-type]  # validated in __post_init__
            int(data["n"]),
            None if low is None else tuple(float(x) for x in low),
            None if high is None else tuple(float(x) for x in high),
        )

    @classmethod
    def from_gymnasium(cls, space: Any) -> ActionSpace:
        """From a ``gymnasium.spaces.Discrete`` or a 1-D ``Box``."""
        name = type(space).__name__
        if name == "Discrete":
            if int(getattr(space, "start", 0)) != 0:
                raise ValueError(f"a Discrete action space must start at 0, got start={space.start}")
            return cls("discrete", int(space.n))
        if name == "Box" and len(space.shape) == 1:
            low = tuple(float(x) for x in space.low)
            high = tuple(float(x) for x in space.high)
            if not all(abs(x) < 1e30 for x in low + high):
                raise ValueError("a continuous action space needs finite bounds (PPO clips actions to them)")
            return cls("continuous", int(space.shape[0]), low, high)
        raise ValueError(f"unsupported action space {space!r}: PPO here trains Discrete or 1-D Box actions")
