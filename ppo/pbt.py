"""Population-based training (Jaderberg et al. 2017, "Population Based Training of Neural Networks"):
every ``interval`` updates, the worst members of a population copy the weights and optimiser state of
the best and perturb the copied hyperparameters ("truncation selection" exploit, "perturb" explore).

It acts on the state of one compiled population program (:mod:`ppo.population`): the members' rows of
:class:`ppo.program.TrainState` on the host, between chunks. Per-row hyperparameters are traced values of
that program, so nothing is compiled again. What a member copies: its donor's ``params`` (with any
observation statistics) and ``opt_state``, row by row, seed ``s`` from the donor's seed ``s``. What it
keeps: its envs, observations, RNG key, episode books and update count, so its seeds keep their own
episodes. Each exploit step is an :class:`Exploit` event; a member's lineage is the list of its events.

Members are ranked by their *fitness*: the mean over the member's seeds of the mean training return of
their last ``train.convergence_window`` episodes (a member with no finished episode ranks last). Training
returns, not evaluation episodes: PBT's own choice, on what it already measured; the sweep still selects
and reports on its separate gymnasium episodes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: hyperparameter (HParams field) -> its key in the optimiser state (``optax.inject_hyperparams``)
_OPTIMISER_KEYS = {"learning_rate": "learning_rate", "max_grad_norm": "max_grad_norm", "adam_eps": "eps"}


@dataclass(frozen=True)
class PBT:
    """When and how a population exploits and explores.

    Args:
        interval: updates between exploit steps (a multiple of ``train.updates_per_chunk``: they happen
            between chunks).
        fields: the hyperparameters that are perturbed (:data:`ppo.config.HPARAM_FIELDS`, not
            ``anneal_lr``).
        fraction: the bottom ``fraction`` of the members copy from the top ``fraction`` (at least one each).
        factors: each copied value is multiplied by one of these, drawn per field, then kept in the
            field's valid range (so a value of 0, e.g. ``entropy_coef: 0``, stays 0: draw from ranges
            above 0 for fields PBT should move).
        seed: the draws (donors, factors) are reproducible.
    """

    interval: int
    fields: tuple[str, ...]
    fraction: float = 0.25
    factors: tuple[float, ...] = (0.8, 1.2)
    seed: int = 0


@dataclass(frozen=True)
class Exploit:
    """One member's exploit step: at ``update`` it took ``donor``'s weights, ``hparams`` its new values."""

    update: int
    member: int
    donor: int
    fitness: float
    donor_fitness: float
    hparams: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bounds(field: str) -> tuple[float, float]:
    """The valid closed range of a hyperparameter, from ``ppo.config.PPOConfig``'s constraints (an open
    bound is moved inside by one float32 step)."""
    import annotated_types

    from ppo.config import PPOConfig

    low, high = -math.inf, math.inf
    for rule in PPOConfig.model_fields[field].metadata:
        if isinstance(rule, annotated_types.Ge):
            low = float(rule.ge)  # type: ignore[arg-type]
        elif isinstance(rule, annotated_types.Gt):
            low = float(np.nextafter(np.float32(rule.gt), np.float32(np.inf)))  # type: ignore[arg-type]
        elif isinstance(rule, annotated_types.Le):
            high = float(rule.le)  # type: ignore[arg-type]
        elif isinstance(rule, annotated_types.Lt):
            high = float(np.nextafter(np.float32(rule.lt), np.float32(-np.inf)))  # type: ignore[arg-type]
    return low, high


def fitness(state: Any, members: int, seeds: int, window: int) -> np.ndarray:
    """[members]: each member's mean over its seeds of the mean return of their last ``window`` training
    episodes (``-inf`` for a member none of whose seeds finished an episode)."""
    from ppo.progress import window_means

    means = window_means(np.asarray(state.stats.window), np.asarray(state.stats.episodes), window)
    out = np.full(members, -np.inf)
    for m in range(members):
        done = [v for v in means[m * seeds : (m + 1) * seeds] if v is not None]
        if done:
            out[m] = float(np.mean(done))
    return out


def exploit(
    state: Any,
    scores: np.ndarray,
    seeds: int,
    pbt: PBT,
    rng: np.random.Generator,
    update: int,
    eligible: np.ndarray | None = None,
) -> tuple[Any, list[Exploit]]:
    """One exploit-and-explore step on a population's host state (member-major rows, ``seeds`` per
    member), with ``scores`` the members' fitness: the bottom ``pbt.fraction`` of the ``eligible`` members
    (default: all; a member whose seeds all stopped training is not) each copy a donor drawn uniformly from
    the top ``pbt.fraction`` and perturb its values of ``pbt.fields``. Returns the new state and the events.
    """
    import jax

    members = len(scores)
    eligible = np.ones(members, bool) if eligible is None else np.asarray(eligible, bool)
    n = max(1, int(members * pbt.fraction))
    if members < 2 or 2 * n > members:
        return state, []
    order = np.argsort(scores, kind="stable")  # ascending: the worst first
    top = [int(m) for m in order[-n:]]
    # the n worst of the members that may receive, if they are strictly worse than every donor
    bottom = [int(m) for m in order if eligible[m] and int(m) not in top][:n]
    bottom = [m for m in bottom if scores[m] < scores[top[0]]]
    if not bottom:
        return state, []
    # whole-tree copies on the host (NumPy), then the rows of each recipient are overwritten
    params = jax.tree.map(np.array, state.params)
    opt_state = jax.tree.map(np.array, state.opt_state)
    hp = jax.tree.map(np.array, state.hp)
    events = []
    for m in bottom:
        donor = top[int(rng.integers(len(top)))]
        mine, theirs = slice(m * seeds, (m + 1) * seeds), slice(donor * seeds, (donor + 1) * seeds)
        for tree in (params, opt_state, hp):  # weights, optimiser moments, and the donor's whole recipe
            for leaf in jax.tree.leaves(tree):
                leaf[mine] = leaf[theirs]
        new = {}
        for field in pbt.fields:  # explore: the copied values, perturbed
            low, high = bounds(field)
            value = float(getattr(hp, field)[mine][0]) * float(rng.choice(pbt.factors))
            new[field] = float(np.float32(min(max(value, low), high)))
            getattr(hp, field)[mine] = new[field]
        # the optimiser holds its own copy of the rate, norm and epsilon: the recipient's values
        for field, key in _OPTIMISER_KEYS.items():
            if key in opt_state.hyperparams:
                opt_state.hyperparams[key][mine] = getattr(hp, field)[mine]
        events.append(Exploit(update, m, donor, float(scores[m]), float(scores[donor]), new))
    return state.replace(params=params, opt_state=opt_state, hp=hp), events


class Schedule:
    """The exploit steps of one PBT run, as :func:`ppo.population.train_together`'s ``between``: after
    the chunk in which the population's update count reaches the next multiple of ``pbt.interval``, rank
    the members (:func:`fitness`) and :func:`exploit`. Records every event (:attr:`events`)."""

    def __init__(self, pbt: PBT, members: int, seeds: int, window: int) -> None:
        self.pbt, self.members, self.seeds, self.window = pbt, members, seeds, window
        self.rng = np.random.default_rng(pbt.seed)
        self.next_update = pbt.interval
        self.events: list[Exploit] = []

    def __call__(self, state: Any, eligible: np.ndarray, alive: np.ndarray | None = None) -> Any:
        """After a chunk: the state after an exploit step when one is due and copied anything, else None.
        ``eligible``: members that may receive; ``alive``: members that have not diverged (default all):
        the others rank last and receive nothing, so they are never donors (their weights may be NaN)."""
        update = int(np.max(np.asarray(state.update)))
        if update < self.next_update:
            return None
        self.next_update = (update // self.pbt.interval + 1) * self.pbt.interval
        scores = fitness(state, self.members, self.seeds, self.window)
        if alive is not None:  # a diverged member neither gives nor receives
            scores = np.where(np.asarray(alive, bool), scores, -np.inf)
            eligible = np.asarray(eligible, bool) & np.asarray(alive, bool)
        new, events = exploit(state, scores, self.seeds, self.pbt, self.rng, update, eligible)
        self.events.extend(events)
        return new if events else None

    def lineage(self, member: int) -> list[dict[str, Any]]:
        """``member``'s exploit steps, in order (each: update, donor, fitness, donor_fitness, hparams)."""
        return [e.to_dict() for e in self.events if e.member == member]


def values_over_updates(
    initial: dict[str, float], lineage: list[dict[str, Any]], last_update: int
) -> dict[str, tuple[list[int], list[float]]]:
    """Per perturbed field, the (updates, values) at which a member's value changed: its initial value at
    update 0, each exploit's new value, and the value in force at ``last_update`` (a step curve)."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for field, value in initial.items():
        updates, values = [0], [float(value)]
        for event in lineage:
            if field in event["hparams"]:
                updates.append(int(event["update"]))
                values.append(float(event["hparams"][field]))
        updates.append(max(last_update, updates[-1]))
        values.append(values[-1])
        out[field] = (updates, values)
    return out
