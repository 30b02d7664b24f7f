"""Bad configs and CLI arguments: exit != 0, a message naming the problem, and nothing started or written
(no run, no checkpoint, no registry change). Run in-process through Typer's runner (one import for ~40
cases); `tests/test_config.py` covers the same path through a real subprocess."""

from __future__ import annotations

import re

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from tests.helpers import ROOT

pytestmark = pytest.mark.reliability

# (id, config file content: dict = YAML of it, str/bytes = raw, None = no file; extra CLI args;
# expected pieces)
CONFIG_CASES = [
    ("type-float", {"ppo": {"learning_rate": "fast"}}, [], ["ppo.learning_rate", "fast"]),
    ("type-int", {"env": {"num_envs": 2.5}}, [], ["env.num_envs", "2.5"]),
    ("type-seeds", {"train": {"seeds": "zero"}}, [], ["train.seeds", "zero"]),
    ("type-bool", {"ppo": {"anneal_lr": "maybe"}}, [], ["ppo.anneal_lr", "maybe"]),
    ("type-list", {"ppo": {"hidden_sizes": 64}}, [], ["ppo.hidden_sizes", "64"]),
    ("range-gamma", {"ppo": {"gamma": 1.5}}, [], ["ppo.gamma", "1.5", "0.0 .. 1.0"]),
    ("range-clip", {"ppo": {"clip_epsilon": 0}}, [], ["ppo.clip_epsilon", "0", "allowed"]),
    ("range-lr", {"ppo": {"learning_rate": -0.001}}, [], ["ppo.learning_rate", "-0.001", "allowed"]),
    ("range-envs", {"env": {"num_envs": 0}}, [], ["env.num_envs", "0", "allowed: 1 .. 65536"]),
    ("range-seed", {"train": {"seeds": [-1]}}, [], ["seeds must be in [0, 2**31)", "-1"]),
    ("range-confidence", {"gate": {"confidence": 1.5}}, [], ["gate.confidence", "1.5"]),
    ("type-registry", {"registry": {"model_name": 3}}, [], ["registry.model_name", "3"]),
    ("range-steps", {"env": {"max_steps_per_episode": 0}}, [], ["env.max_steps_per_episode", "0"]),
    ("unknown-section", {"optimiser": {"lr": 1}}, [], ["optimiser", "unknown key", "allowed keys here"]),
    ("unknown-field", {"ppo": {"lr": 0.1}}, [], ["ppo.lr", "unknown key", "learning_rate"]),
    (
        "sizes-minibatch",
        {"ppo": {"batch_size": 64, "minibatch_size": 48}},
        [],
        ["minibatch_size (48) must divide batch_size (64)"],
    ),
    (
        "sizes-envs",
        {"env": {"num_envs": 6}, "ppo": {"batch_size": 64, "minibatch_size": 64}},
        [],
        ["env.num_envs (6) must divide ppo.batch_size (64)"],
    ),
    (
        "sizes-minibatch-big",
        {"ppo": {"batch_size": 64, "minibatch_size": 128}},
        [],
        ["minibatch_size (128) must be <= batch_size (64)"],
    ),
    ("anneal-horizon", {"ppo": {"anneal_lr": True}}, [], ["anneal_lr needs train.max_env_steps"]),
    ("env-unknown", {"env": {"id": "Pong-v5"}}, [], ["env.id", "Pong-v5", "CartPole-v1"]),
    ("env-case", {"env": {"id": "cartpole-v1"}}, [], ["env.id", "cartpole-v1", "CartPole-v1"]),
    ("gate-mode", {"gate": {"mode": "better"}}, [], ["gate.mode", "better", "non_inferior", "superior"]),
    ("env-user-not-allowed", {"env": {"id": "os:system"}}, [], ["env.id", "os", "PPO_USER_ENV_MODULES"]),
    ("yaml-malformed", "ppo: [unclosed\n", [], ["is not valid YAML"]),
    ("yaml-list", "- 1\n- 2\n", [], ["must hold a mapping of sections", "list"]),
    ("yaml-section-scalar", "ppo: 3\n", [], ["ppo", "3"]),
    ("yaml-binary", b"\xff\xfe\x00ppo", [], ["cannot be read"]),
    ("file-missing", None, [], ["does not exist"]),
    (
        "escape-absolute",
        {"train": {"checkpoint_dir": "/etc/ppo"}},
        [],
        ["train.checkpoint_dir", "/etc/ppo", "outside $PPO_HOME"],
    ),
    (
        "escape-dotdot",
        {"train": {"checkpoint_dir": "../../outside"}},
        [],
        ["train.checkpoint_dir", "outside $PPO_HOME"],
    ),
    (
        "escape-store",
        {"tracking": {"tracking_uri": "sqlite:////tmp/elsewhere.db"}},
        [],
        ["tracking.tracking_uri", "outside $PPO_HOME"],
    ),
    ("set-unknown-field", {}, ["--set", "ppo.nope=1"], ["unknown field 'nope' in ppo", "learning_rate"]),
    ("set-unknown-section", {}, ["--set", "nope.lr=1"], ["unknown section 'nope'"]),
    ("set-no-equals", {}, ["--set", "learning_rate"], ["expected key=value"]),
    ("set-no-section", {}, ["--set", "gamma=0.9"], ["expected <section>.<field>"]),
    ("set-bad-yaml", {}, ["--set", "train.seeds=[1"], ["value is not valid YAML"]),
    ("set-out-of-range", {}, ["--set", "ppo.gamma=2"], ["ppo.gamma", "2", "0.0 .. 1.0"]),
]

# (id, argv, expected pieces): arguments rejected by the CLI itself
ARG_CASES = [
    ("unknown-option", ["train", "--frobnicate"], ["No such option", "--frobnicate"]),
    ("config-missing-value", ["train", "--config"], ["requires an argument"]),
    ("unknown-command", ["fly"], ["No such command", "fly"]),
    ("evaluate-zero-episodes", ["evaluate", "--episodes", "0"], ["--episodes", "greater than or equal to 1"]),
    ("evaluate-bad-backend", ["evaluate", "--backend", "torch"], ["backend", "torch"]),
    ("serve-port-range", ["serve", "--port", "70000"], ["--port", "less than or equal to 65535"]),
    ("promote-version-zero", ["promote", "--version", "0"], ["--version", "greater than or equal to 1"]),
    ("promote-version-text", ["promote", "--version", "abc"], ["--version", "valid integer"]),
    ("promote-no-version", ["promote"], ["Missing option", "--version"]),
    (
        "evaluate-untrained",
        ["evaluate", "-c", str(ROOT / "configs" / "cartpole.yaml")],
        ["no checkpoint", "train this config first"],
    ),
]


def _plain(text: str) -> str:
    """Rich/Typer output without colour codes, box drawing and line wrapping."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def _invoke(argv: list[str], home) -> tuple[int, str]:
    result = CliRunner().invoke(app, argv, env={"PPO_HOME": str(home), "COLUMNS": "200"})
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), (
        f"unhandled {type(result.exception).__name__}: {result.exception}"
    )
    return result.exit_code, _plain(result.output)


def _nothing_written(home) -> None:
    left = sorted(str(p.relative_to(home)) for p in home.rglob("*")) if home.exists() else []
    assert left == [], f"a rejected command wrote {left} (a run, a checkpoint or a registry)"


@pytest.mark.parametrize(
    "content,args,expected", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES]
)
@pytest.mark.parametrize("command", ["train", "pipeline"])
def test_bad_config_is_rejected_before_anything_runs(tmp_path, command, content, args, expected):
    home, path = tmp_path / "home", tmp_path / "config.yaml"
    if isinstance(content, dict):
        path.write_text(yaml.safe_dump(content))
    elif isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    code, output = _invoke([command, "--config", str(path), *args], home)
    assert code == 2, output
    for piece in expected:
        assert piece in output, (piece, output)
    assert "Traceback" not in output
    _nothing_written(home)


@pytest.mark.parametrize("argv,expected", [c[1:] for c in ARG_CASES], ids=[c[0] for c in ARG_CASES])
def test_bad_arguments_are_rejected(tmp_path, argv, expected):
    home = tmp_path / "home"
    code, output = _invoke(argv, home)
    assert code != 0, output
    for piece in expected:
        assert piece in output, (piece, output)
    assert "Traceback" not in output
    _nothing_written(home)


def test_the_config_cases_cover_every_section_and_every_kind_of_error(tmp_path, monkeypatch):
    """What each CONFIG_CASE is rejected for, found in-process from the config model's own errors (no CLI, no
    training): together they must reach every section of ``Config`` and every kind of error the loader has."""
    import copy

    from pydantic import ValidationError

    from ppo.config import Config, ConfigError, load_config, parse_overrides

    monkeypatch.setenv("PPO_HOME", str(tmp_path / "home"))  # where the path-confinement checks point

    def kinds(content, args) -> set[tuple[str, str]]:
        """{(kind, section)} of the errors ``content`` + ``--set`` args produce; section "" = not one
        section."""
        if isinstance(content, str):
            try:
                content = yaml.safe_load(content)
            except yaml.YAMLError:
                return {("file", "")}
        if not isinstance(content, dict):
            return {("file", "")}  # binary, missing file, a YAML list: the reader rejects it
        sets = [a for flag, a in zip(args[::2], args[1::2], strict=True) if flag == "--set"]
        try:
            overrides = parse_overrides(sets)
        except ConfigError:
            return {("override", "")}
        data = copy.deepcopy(content)
        for key, value in overrides.items():
            section, _, field = key.partition(".")
            model = Config.model_fields.get(section)
            if model is None or field not in model.annotation.model_fields:
                return {("override", "")}  # not a <section>.<field> of the model
            data.setdefault(section, {})[field] = value
        try:
            Config.model_validate(data)
        except ValidationError as e:
            found = set()
            for err in e.errors():
                loc, kind = err["loc"], err["type"]
                section = str(loc[0]) if loc and loc[0] in Config.model_fields else ""
                if kind == "extra_forbidden":
                    found.add(("unknown key", section))
                elif kind == "literal_error":
                    found.add(("literal", section))
                elif kind.startswith(("greater_than", "less_than")):
                    found.add(("range", section))
                elif kind == "value_error":  # a validator: of one field, of a section, of the whole config
                    found.add(
                        ({0: "cross-section", 1: "section check"}.get(len(loc), "field check"), section)
                    )
                else:
                    found.add(("type", section))
            return found
        return set()

    covered: dict[str, set[str]] = {}
    for case_id, content, args, _ in CONFIG_CASES:
        found = kinds(content, args)
        assert found, f"{case_id}: the config model accepts this case; it tests nothing"
        if isinstance(content, dict):  # and the loader the CLI calls rejects it too
            path = tmp_path / f"{case_id}.yaml"
            path.write_text(yaml.safe_dump(content))
            with pytest.raises(ConfigError):
                load_config(path, parse_overrides(args[1::2]))
        for kind, section in found:
            covered.setdefault(kind, set()).add(section)

    expected_kinds = {
        "type",
        "range",
        "unknown key",
        "literal",
        "cross-section",
        "section check",
        "field check",
        "file",
        "override",
    }
    assert expected_kinds <= set(covered), f"no case for: {sorted(expected_kinds - set(covered))}"
    sections = set().union(*covered.values()) - {""}
    assert sections >= set(Config.model_fields), (
        f"no case for section(s): {sorted(set(Config.model_fields) - sections)}"
    )
    ids = [c[0] for c in CONFIG_CASES] + [c[0] for c in ARG_CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"


NoThresholdPointEnv: type | None = None  # built in the test (importing PointEnv imports gymnax and JAX)


def _no_threshold_env():
    from examples.point_env import PointEnv

    class NoThreshold(PointEnv):
        reward_threshold = None

    return NoThreshold


def test_a_pipeline_without_a_gate_threshold_is_rejected_before_training(tmp_path, monkeypatch):
    """An env with no reward threshold (a user env without ``reward_threshold``, a gymnasium env without
    one, Brax's ant) and no ``gate.min_return``: ``ppo train`` is fine, but the pipeline's gate would have
    nothing to certify; it used to train and then fail in the gate with a TypeError."""
    global NoThresholdPointEnv
    NoThresholdPointEnv = _no_threshold_env()  # noqa: N806 - importable as tests.reliability.test_bad_input:…
    monkeypatch.setenv("PPO_USER_ENV_MODULES", "examples,tests.reliability.test_bad_input")
    home, path = tmp_path / "home", tmp_path / "config.yaml"
    env_id = "tests.reliability.test_bad_input:NoThresholdPointEnv"
    path.write_text(yaml.safe_dump({"env": {"id": env_id}, "train": {"max_env_steps": 1000}}))
    code, output = _invoke(["pipeline", "--config", str(path)], home)
    assert code == 2, output
    assert "gate.min_return" in output and "no reward threshold" in output, output
    assert "Traceback" not in output
    _nothing_written(home)
