"""The one configuration model: every default and every validation rule lives here.

Sections mirror the pipeline: ``env`` (what to train on), ``ppo`` (the algorithm, with the reference
document's parameter names), ``train`` (episodes, convergence, evaluation, chunking, checkpoints),
``tracking`` / ``registry`` (MLflow) and ``gate`` (promotion statistics).

Errors are meant for people: :func:`load_config` raises :class:`ConfigError` whose message names the
dotted field, the bad value and what is allowed, before any training starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

#: Input limits: a config file, and one ``--set`` value (hostile or mistaken input is refused before parsing)
MAX_CONFIG_BYTES = 1 << 20
MAX_OVERRIDE_CHARS = 4096


def excerpt(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: error messages never echo more than this of the input."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class EnvConfig(_Section):
    """Which environment to train on and how many copies run side by side per seed."""

    id: str = Field("CartPole-v1", description="an env of ppo.envs.ENV_SPECS (README: Environments)")
    num_envs: int = Field(4, ge=1, le=65536, description="parallel envs per seed")
    max_steps_per_episode: int | None = Field(
        None, ge=1, le=100_000, description="time limit (truncation); default the env's gymnasium limit"
    )
    backend: Literal["auto", "host"] = Field(
        "auto",
        description="auto: fully jitted on the env's JAX implementation when it has one; host: step the "
        "real gymnasium envs on the host (policy and update still jitted)",
    )
    normalize_observations: bool = Field(
        False, description="running mean/std observation normalisation (SB3 VecNormalize norm_obs)"
    )
    normalize_rewards: bool = Field(
        False, description="rewards scaled by the std of the discounted return (VecNormalize norm_reward)"
    )

    @field_validator("id")
    @classmethod
    def _known_env(cls, value: str) -> str:
        from ppo.brax_envs import is_brax_id
        from ppo.envs import ENV_SPECS, env_spec

        if value in ENV_SPECS:
            return value
        try:
            env_spec(value)  # a user's class, or a registered gymnasium env: checked (and explained)
        except ValueError as e:
            if ":" in value or is_brax_id(value) or str(e).startswith(value):
                raise
            raise ValueError(
                f"{excerpt(value)} is not allowed; expected one of {', '.join(ENV_SPECS)}, a registered "
                "gymnasium env id, a Brax env as 'brax/<name>', or your own JAX env as '<module>:<Class>'"
            ) from None
        return value


#: the ``ppo`` fields that shape no array: each training row (a population member's seed) carries its own
#: values, so one compiled program trains members that differ in them (``ppo.population``, ``ppo.pbt``)
HPARAM_FIELDS = (
    "learning_rate",
    "clip_epsilon",
    "gamma",
    "gae_lambda",
    "entropy_coef",
    "value_coef",
    "max_grad_norm",
    "adam_eps",
    "anneal_lr",
)


class PPOConfig(_Section):
    """Algorithm hyperparameters; names and defaults are the reference table's."""

    learning_rate: float = Field(3e-4, gt=0.0, le=1.0)
    clip_epsilon: float = Field(0.2, gt=0.0, lt=1.0)
    gamma: float = Field(0.99, ge=0.0, le=1.0)
    gae_lambda: float = Field(0.95, ge=0.0, le=1.0)
    entropy_coef: float = Field(0.01, ge=0.0, le=1.0)
    value_coef: float = Field(0.5, ge=0.0, le=100.0)
    max_grad_norm: float = Field(0.5, gt=0.0, le=1e6)
    epochs_per_update: int = Field(10, ge=1, le=1000)
    batch_size: int = Field(64, ge=1, le=1 << 24, description="env steps per update, all envs of a seed")
    minibatch_size: int = Field(64, ge=1, le=1 << 24)
    anneal_lr: bool = Field(
        False, description="linear decay to 0 over the updates train.max_env_steps allows"
    )
    normalize_advantages: bool = Field(
        True, description="advantages normalised per minibatch (mean 0, std 1)"
    )
    hidden_sizes: tuple[int, ...] = Field((64, 64), min_length=1, max_length=8)
    activation: Literal["tanh", "relu"] = Field(
        "tanh", description="the MLP's activation (tanh: PureJaxRL/SB3; relu: gymnax-blines' MinAtar agents)"
    )
    conv_channels: tuple[int, ...] = Field(
        (),
        max_length=4,
        description="3x3 ReLU convolutions before the MLP, for grid/pixel observations (MinAtar: [16])",
    )
    log_std_init: float = Field(
        0.0, ge=-20.0, le=5.0, description="continuous actions: initial log std of the Gaussian policy"
    )
    adam_eps: float = Field(1e-5, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _sizes(self) -> PPOConfig:
        if any(h < 1 or h > 4096 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes: every layer must be in [1, 4096], got {list(self.hidden_sizes)}")
        if any(c < 1 or c > 512 for c in self.conv_channels):
            raise ValueError(
                f"conv_channels: every layer must be in [1, 512], got {list(self.conv_channels)}"
            )
        if self.minibatch_size > self.batch_size:
            raise ValueError(
                f"minibatch_size ({self.minibatch_size}) must be <= batch_size ({self.batch_size})"
            )
        if self.batch_size % self.minibatch_size:
            raise ValueError(
                f"minibatch_size ({self.minibatch_size}) must divide batch_size ({self.batch_size})"
            )
        if self.normalize_advantages and self.minibatch_size < 2:
            # one sample minus its own mean is 0: every advantage would be 0 and the policy never update
            raise ValueError(
                f"minibatch_size ({self.minibatch_size}) with normalize_advantages: a minibatch of one "
                "normalises every advantage to 0, so the policy would never update; use minibatch_size >= 2 "
                "or ppo.normalize_advantages: false"
            )
        return self


class TrainConfig(_Section):
    """Episode budget, convergence, evaluation cadence and how the hot path is chunked."""

    max_episodes: int = Field(1000, ge=1, le=10**9)
    target_reward: float | None = Field(
        None,
        ge=-1e9,
        le=1e9,
        description="convergence threshold; default the "
        "env's reward threshold (ppo.envs.ENV_SPECS: CartPole-v1 475, Acrobot-v1 -100, ...)",
    )
    convergence_window: int = Field(100, ge=1, le=100_000)
    early_stopping_patience: int = Field(10, ge=0, le=10**9)
    eval_frequency: int = Field(50, ge=1, le=10**9, description="episodes between evaluations")
    eval_episodes: int = Field(10, ge=1, le=100_000)
    log_frequency: int = Field(1, ge=1, le=10**6, description="chunks between log/callback rows")
    seeds: tuple[int, ...] = Field((0,), min_length=1, max_length=1024)
    max_env_steps: int | None = Field(None, ge=1, le=10**12, description="hard cap per seed")
    updates_per_chunk: int = Field(20, ge=1, le=100_000, description="updates in one jitted call")
    checkpoint_every: int = Field(10, ge=0, le=10**6, description="chunks between checkpoints; 0 = end only")
    checkpoint_dir: str | None = Field(
        None,
        description="inside $PPO_HOME (relative paths are taken from it); "
        "default $PPO_HOME/checkpoints/<config hash>; the pipeline's train "
        "task uses a <config hash>-<code version> folder inside it",
    )

    @field_validator("checkpoint_dir")
    @classmethod
    def _inside_home(cls, value: str | None) -> str | None:
        if value is not None:
            confined_path(value)
        return value

    @model_validator(mode="after")
    def _checks(self) -> TrainConfig:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {list(self.seeds)}")
        if any(s < 0 or s >= 2**31 for s in self.seeds):
            raise ValueError(f"seeds must be in [0, 2**31), got {list(self.seeds)}")
        return self


#: experiment and registered-model names: names, not paths or filter fragments (MLflow puts the experiment
#: name into artifact paths and the model name into registry filter strings)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def _name(value: str | None) -> str | None:
    if value is not None and (not NAME_PATTERN.fullmatch(value) or ".." in value):
        raise ValueError(
            f"{excerpt(value)} is not allowed; a name is 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '/', '..', quotes or spaces)"
        )
    return value


class TrackingConfig(_Section):
    enabled: bool = True
    experiment: str | None = Field(None, description="default ppo-<env slug>")
    tracking_uri: str | None = Field(
        None,
        description="default $MLFLOW_TRACKING_URI or sqlite in $PPO_HOME; "
        "a local store (sqlite:/// or file:) must be inside $PPO_HOME",
    )
    outage_tolerance_s: float = Field(
        60.0,
        ge=0.0,
        le=86_400.0,
        description="how long training goes on (buffering metrics) while the tracking server is unreachable",
    )

    @field_validator("tracking_uri")
    @classmethod
    def _local_store_inside_home(cls, value: str | None) -> str | None:
        from ppo.tracking.uris import local_store_path  # pure parsing: imports no MLflow

        local = None if value is None else local_store_path(value)
        if local is not None:
            confined_path(local)
        return value

    @field_validator("experiment")
    @classmethod
    def _experiment_is_a_name(cls, value: str | None) -> str | None:
        return _name(value)


class RegistryConfig(_Section):
    """Where the pipeline registers: training itself never writes model versions (the register task does)."""

    model_name: str | None = Field(None, description="default ppo-<env slug>")

    @field_validator("model_name")
    @classmethod
    def _model_is_a_name(cls, value: str | None) -> str | None:
        return _name(value)


class GateConfig(_Section):
    """The promotion gate (README "Promotion rules"): the deployed policy against the champion's, paired on
    fresh held-out start states drawn per candidate, plus a recipe check over the training seeds."""

    episodes: int = Field(100, ge=1, le=10_000, description="fresh gymnasium episodes each policy plays")
    min_return: float | None = Field(
        None,
        ge=-1e9,
        le=1e9,
        description="default the env's reward threshold (ppo.envs.ENV_SPECS: CartPole-v1 475, ...)",
    )
    min_seeds: int = Field(5, ge=1, le=1024, description="training seeds that must reach min_return")
    margin: float = Field(
        0.02,
        ge=0.0,
        description="non-inferiority margin, a fraction of the env's "
        "return range (CartPole-v1 0..500: 0.02 = 10)",
    )
    mode: Literal["non_inferior", "superior"] = "non_inferior"
    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    bootstrap_samples: int = Field(2000, ge=100, le=1_000_000)


class Config(_Section):
    env: EnvConfig = EnvConfig()
    ppo: PPOConfig = PPOConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()
    registry: RegistryConfig = RegistryConfig()
    gate: GateConfig = GateConfig()

    @model_validator(mode="before")
    @classmethod
    def _env_defaults(cls, data: Any) -> Any:
        """Unset ``train.target_reward`` / ``gate.min_return`` default to the env's reward threshold, and
        an unset ``env.max_steps_per_episode`` to its gymnasium time limit (ppo.envs.ENV_SPECS)."""
        from ppo.envs import env_spec

        if not isinstance(data, dict):
            return data
        given = data.get("env")
        env: dict[str, Any] = given if isinstance(given, dict) else {}
        try:
            spec = env_spec(str(env.get("id", EnvConfig.model_fields["id"].default)))
        except ValueError:
            return data  # the id's own validator explains
        data = dict(data)
        if env.get("max_steps_per_episode") is None:
            data["env"] = {**env, "max_steps_per_episode": spec.max_episode_steps()}
        threshold = spec.reward_threshold()
        if threshold is None:
            return data
        for section, key in (("train", "target_reward"), ("gate", "min_return")):
            sub = data.get(section, {})
            if isinstance(sub, dict) and sub.get(key) is None:
                data[section] = {**sub, key: threshold}
        return data

    @field_validator("gate")
    @classmethod
    def _relative_margin(cls, gate: GateConfig) -> GateConfig:
        if gate.margin > 1.0:
            raise ValueError(
                f"gate.margin: {gate.margin} is a fraction of the env's return range (allowed: 0 .. 1); "
                "an absolute margin of 10 on CartPole-v1 (returns 0..500) is 0.02"
            )
        return gate

    @model_validator(mode="after")
    def _cross(self) -> Config:
        if self.ppo.batch_size % self.env.num_envs:
            raise ValueError(
                f"env.num_envs ({self.env.num_envs}) must divide ppo.batch_size ({self.ppo.batch_size})"
            )
        if self.env.backend == "host":
            from ppo.envs import env_spec

            if env_spec(self.env.id).evaluates_on_jax:
                raise ValueError(
                    f"env.backend: host steps the real gymnasium env, and {self.env.id} has none (its "
                    "class names no gymnasium_twin); use env.backend: auto"
                )
        if self.ppo.conv_channels:
            from ppo.envs import env_spec

            shape = env_spec(self.env.id).observation_shape
            if len(shape) != 3:
                raise ValueError(
                    f"ppo.conv_channels: convolutions need grid observations (H, W, C); {self.env.id}'s "
                    f"observations have shape {shape}: leave conv_channels empty"
                )
        if self.ppo.anneal_lr and self.train.max_env_steps is None:
            raise ValueError("ppo.anneal_lr needs train.max_env_steps (the horizon to anneal over)")
        if self.train.max_env_steps is not None and self.train.max_env_steps < self.ppo.batch_size:
            raise ValueError(
                f"train.max_env_steps ({self.train.max_env_steps}) must be >= ppo.batch_size "
                f"({self.ppo.batch_size})"
            )
        need, limit, source = self.memory_estimate_bytes(), *memory_limit_bytes()
        if need > limit:
            gib = 1 << 30
            raise ValueError(
                f"this config needs about {need / gib:.1f} GiB of memory to train (seeds x networks x "
                f"env.num_envs x ppo.batch_size / minibatch_size), more than the {limit / gib:.1f} GiB "
                "allowed "
                f"({source}); use fewer or smaller layers, envs, seeds or a smaller minibatch"
            )
        return self

    def memory_estimate_bytes(self) -> int:
        """A rough upper estimate of the memory training needs, from the shapes alone (before compiling).

        Per seed: parameters of the actor and critic with their gradients, Adam moments and copies (x6),
        the trajectory buffers, the activations of one rollout step over all envs and of one minibatch's
        forward and backward pass (x3); XLA's temporaries at most double it.
        """
        from ppo.envs import env_spec

        spec = env_spec(self.env.id)
        first, conv_weights, conv_width = spec.observation_dim, 0, 0
        if self.ppo.conv_channels and len(spec.observation_shape) == 3:  # 3x3 'VALID' convolutions
            h, w, c = spec.observation_shape
            for out in self.ppo.conv_channels:
                h, w = max(h - 2, 1), max(w - 2, 1)
                conv_weights += 9 * c * out + out
                conv_width += h * w * out
                c = out
            first = h * w * c
        sizes = [first, *self.ppo.hidden_sizes]  # the MLP torsos
        weights = conv_weights + sum(a * b + b for a, b in zip(sizes, sizes[1:], strict=False))
        params = 2 * weights + sizes[-1] * (spec.action_dim + 1)
        width = 2 * (sum(self.ppo.hidden_sizes) + conv_width)  # activations of both networks per sample
        per_seed = 4 * (
            6 * params
            + self.ppo.batch_size * (2 * spec.observation_dim + 8)
            + self.env.num_envs * width
            + 3 * self.ppo.minibatch_size * width
        )
        return 2 * per_seed * len(self.train.seeds)

    # ---- derived values (never stored, so they cannot disagree with the fields) ----
    @property
    def num_steps(self) -> int:
        """Steps each env takes per update."""
        return self.ppo.batch_size // self.env.num_envs

    @property
    def num_minibatches(self) -> int:
        return self.ppo.batch_size // self.ppo.minibatch_size

    @property
    def env_slug(self) -> str:
        from ppo.envs import env_spec

        return env_spec(self.env.id).slug

    @property
    def max_steps(self) -> int:
        """The episode time limit (``env.max_steps_per_episode``, always set once validated)."""
        assert self.env.max_steps_per_episode is not None  # _env_defaults fills it
        return self.env.max_steps_per_episode

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or f"ppo-{self.env_slug}"

    @property
    def model_name(self) -> str:
        return self.registry.model_name or f"ppo-{self.env_slug}"

    def total_updates(self) -> int | None:
        """Updates per seed that ``train.max_env_steps`` allows: whole updates only, never past the budget."""
        if self.train.max_env_steps is None:
            return None
        return self.train.max_env_steps // self.ppo.batch_size

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def flat(self) -> dict[str, Any]:
        """Dotted-name view, e.g. ``{"ppo.learning_rate": 3e-4, ...}`` (MLflow params)."""
        out: dict[str, Any] = {}
        for section, values in self.to_dict().items():
            for key, value in values.items():
                out[f"{section}.{key}"] = value
        return out

    def config_hash(self) -> str:
        """Content hash of everything that shapes training (tracking/registry/gate excluded)."""
        d = self.to_dict()
        shaping = {k: d[k] for k in ("env", "ppo", "train")}
        shaping["train"] = {k: v for k, v in shaping["train"].items() if k != "checkpoint_dir"}
        if shaping["ppo"].get("activation") == "tanh":  # added later: the default keeps earlier hashes
            shaping["ppo"] = {k: v for k, v in shaping["ppo"].items() if k != "activation"}
        blob = json.dumps(shaping, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class ConfigError(ValueError):
    """A config problem, with a message that names the field, the value and what is allowed."""


def _describe(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()) if not isinstance(p, int)) or "<config>"
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    value = err.get("input")
    shown = excerpt(value) if not isinstance(value, dict) else "{...}"
    if kind == "extra_forbidden":
        parent, _, leaf = loc.rpartition(".")
        allowed = _field_names(parent)
        return f"{loc}: unknown key {leaf!r}; allowed keys here: {', '.join(allowed)}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        lo, hi = _bounds(loc)
        return f"{loc}: {shown} is out of range; allowed: {lo} .. {hi} ({err['msg'].lower()})"
    if kind == "literal_error":
        return f"{loc}: {shown} is not allowed; expected {ctx.get('expected')}"
    if kind == "value_error":
        msg = str(ctx.get("error", err.get("msg")))
        return msg if loc == "<config>" else f"{loc}: {msg}"
    return f"{loc}: {err.get('msg')} (got {shown})"


def _section_model(path: str) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in [p for p in path.split(".") if p]:
        field = model.model_fields.get(part)
        if field is None or not (
            isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)
        ):
            return None
        model = field.annotation
    return model


def _field_names(path: str) -> list[str]:
    model = _section_model(path)
    return sorted(model.model_fields) if model else []


def _bounds(loc: str) -> tuple[str, str]:
    parent, _, leaf = loc.rpartition(".")
    model = _section_model(parent)
    lo, hi = "-inf", "inf"
    if model and leaf in model.model_fields:
        for m in model.model_fields[leaf].metadata:
            for attr, side in (("ge", "lo"), ("gt", "lo>"), ("le", "hi"), ("lt", "hi<")):
                v = getattr(m, attr, None)
                if v is None:
                    continue
                if side.startswith("lo"):
                    lo = f"{v}" if side == "lo" else f">{v}"
                else:
                    hi = f"{v}" if side == "hi" else f"<{v}"
    return lo, hi


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(
            f"override {key!r}: expected <section>.<field>, sections: {', '.join(Config.model_fields)}"
        )
    section, field = parts
    if section not in Config.model_fields:
        raise ConfigError(
            f"override {key!r}: unknown section {section!r}; allowed: {', '.join(Config.model_fields)}"
        )
    if field not in _field_names(section):
        raise ConfigError(
            f"override {key!r}: unknown field {field!r} in {section}; "
            f"allowed: {', '.join(_field_names(section))}"
        )
    sub = d.setdefault(section, {})
    if not isinstance(sub, dict):
        raise ConfigError(f"{section}: must be a mapping, got {sub!r}")
    sub[field] = value


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["ppo.learning_rate=1e-3", ...]`` → ``{"ppo.learning_rate": 0.001}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {excerpt(item)}: expected key=value, e.g. ppo.learning_rate=1e-3")
        if len(raw) > MAX_OVERRIDE_CHARS:
            raise ConfigError(
                f"override {excerpt(key.strip())}: the value is longer than {MAX_OVERRIDE_CHARS} "
                f"characters ({len(raw)}); put long values in a config file"
            )
        try:
            out[key.strip()] = safe_yaml(raw, f"override {excerpt(key.strip())}") if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(
                f"override {excerpt(item)}: value is not valid YAML ({excerpt(str(e).splitlines()[0], 120)})"
            ) from None
    return out


def require_gate_threshold(cfg: Config) -> Config:
    """``cfg``, or :class:`ConfigError` when the promotion gate would have no ``min_return`` to certify:
    the env has no reward threshold to default to (a user env without ``reward_threshold``, a gymnasium
    env without one, most Brax envs) and the config sets none. The pipeline checks this before it
    trains; ``ppo train`` does not need it."""
    if cfg.gate.min_return is None:
        raise ConfigError(
            f"invalid config:\n  gate.min_return: {excerpt(cfg.env.id)} has no reward threshold to default "
            "to, so the promotion gate has nothing to certify; set the return a policy must reach, e.g. "
            "--set gate.min_return=3000 (and train.target_reward, if training should stop there)"
        )
    return cfg


def build_config(data: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Validate a nested dict plus dotted overrides into a :class:`Config`."""
    data = json.loads(json.dumps(data or {}))  # deep copy, JSON-able only
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a mapping of sections, got {type(data).__name__}")
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(
            "invalid config:\n  " + "\n  ".join(_describe(dict(x)) for x in e.errors())
        ) from None


def read_yaml(path: str | os.PathLike[str], what: str = "config file") -> dict[str, Any]:
    """A YAML file holding a mapping, or :class:`ConfigError` naming the file and what is wrong with it."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} {str(p)!r} does not exist or is not a file")
    size = p.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{what} {str(p)!r} is larger than {MAX_CONFIG_BYTES >> 10} KiB ({size:,} bytes): not a config"
        )
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{what} {str(p)!r} cannot be read: {excerpt(str(e), 200)}") from None
    try:
        data = safe_yaml(text, f"{what} {str(p)!r}") or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {str(p)!r} is not valid YAML: {excerpt(str(e), 300)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {str(p)!r} must hold a mapping of sections, got {type(data).__name__}")
    return data


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None
) -> Config:
    """Read a YAML file (or nothing: all defaults) and apply dotted overrides."""
    return build_config({} if path is None else read_yaml(path), overrides)


def memory_limit_bytes() -> tuple[int, str]:
    """What a config may plan to use: ``$PPO_MAX_MEMORY_GB``, else 80% of this machine's memory."""
    setting = os.environ.get("PPO_MAX_MEMORY_GB", "").strip()
    if setting:
        return int(float(setting) * (1 << 30)), f"PPO_MAX_MEMORY_GB={setting}"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 16 << 30
    return int(0.8 * total), "80% of this machine's memory; PPO_MAX_MEMORY_GB sets another limit"


def safe_yaml(text: str, what: str) -> Any:
    """``yaml.safe_load`` that refuses anchors and aliases: a few hundred bytes of nested aliases expand
    to gigabytes while loading, before any validation could look at the result."""
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise ConfigError(
                f"{what}: YAML anchors and aliases are not allowed in configs (nested aliases "
                "expand to gigabytes); write the values out"
            )
    return yaml.safe_load(text)


def ppo_home() -> Path:
    """State folder: ``$PPO_HOME`` or ``./.ppo``; an empty ``PPO_HOME`` counts as unset (it would
    otherwise put every state file into the current directory)."""
    return Path(os.environ.get("PPO_HOME", "").strip() or ".ppo").resolve()


def confined_path(path: str | os.PathLike[str]) -> Path:
    """``path`` resolved against ``$PPO_HOME``; a config may only name places to write inside it.

    Why: configs travel (deployment parameters, CI, shared YAML files); a field like
    ``train.checkpoint_dir: /etc`` or ``../../x`` must not turn a training run into a write anywhere on
    the worker. Symlinks and ``..`` are resolved before the check.
    """
    home = ppo_home()
    target = (home / Path(path).expanduser()).resolve()
    if not target.is_relative_to(home):
        raise ValueError(
            f"{str(path)!r} is outside $PPO_HOME ({home}); allowed: a path inside $PPO_HOME "
            "(relative paths are taken from it)"
        )
    return target


def flat_kwargs_to_overrides(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Map the reference's flat keyword names (``max_episodes=...``) onto dotted config fields."""
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if "." in key:
            out[key] = value
            continue
        homes = [s for s in Config.model_fields if key in _field_names(s)]
        if key == "max_steps_per_episode":
            homes = ["env"]
        if len(homes) != 1:
            raise ConfigError(f"unknown training parameter {key!r}")
        out[f"{homes[0]}.{key}"] = value
    return out
