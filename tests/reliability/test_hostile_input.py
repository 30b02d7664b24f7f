"""Hostile input: configs and overrides that try to write outside $PPO_HOME, inject into registry
filters, or exhaust memory are refused up front (exit 2) with a short message, and nothing is written."""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from ppo.cli import app

pytestmark = pytest.mark.reliability

BOMB = """a: &a ["x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def _run(tmp_path, monkeypatch, args):
    home = tmp_path / "home"
    monkeypatch.setenv("PPO_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    t = time.monotonic()
    result = CliRunner().invoke(app, ["train", "--no-mlflow", *args])
    return result.exit_code, result.output, time.monotonic() - t, home


def _nothing_written(tmp_path, home):
    assert not home.exists() or not any(home.rglob("*.msgpack"))
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize(
    "override,pieces",
    [
        ("tracking.experiment=../../../../../outside", ["tracking.experiment", "not allowed"]),
        ("tracking.experiment=a/b", ["tracking.experiment"]),
        ("registry.model_name=x' OR name LIKE '%", ["registry.model_name", "not allowed"]),
        (
            "tracking.tracking_uri=sqlite+pysqlite:////tmp/ppo-outside/b.db",
            ["tracking.tracking_uri", "outside $PPO_HOME"],
        ),
        (
            "tracking.tracking_uri=sqlite+pysqlite:///../../b.db",
            ["tracking.tracking_uri", "outside $PPO_HOME"],
        ),
        ("tracking.tracking_uri=gopher://x", ["tracking.tracking_uri", "gopher"]),
    ],
)
def test_names_and_store_uris_are_confined(tmp_path, monkeypatch, override, pieces):
    code, output, _, home = _run(tmp_path, monkeypatch, ["--set", override])
    assert code == 2, output
    for piece in pieces:
        assert piece in output, (piece, output)
    _nothing_written(tmp_path, home)


def test_yaml_alias_bomb_file_is_refused_fast(tmp_path, monkeypatch):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    code, output, seconds, home = _run(tmp_path, monkeypatch, ["--config", str(path)])
    assert code == 2 and "anchors and aliases are not allowed" in output, output
    assert seconds < 5 and len(output) < 2000
    _nothing_written(tmp_path, home)


def test_yaml_alias_bomb_override_is_refused_fast(tmp_path, monkeypatch):
    value = "[" + ",".join(["*a"] * 9) + "]"
    code, output, seconds, _ = _run(tmp_path, monkeypatch, ["--set", f"train.seeds=&a [{value}, {value}]"])
    assert code == 2 and "anchors and aliases are not allowed" in output, output
    assert seconds < 5


def test_oversized_file_and_override_are_refused_before_parsing(tmp_path, monkeypatch):
    path = tmp_path / "big.yaml"
    path.write_text("ppo:\n  learning_rate: 0.001\n" + "# padding\n" * 200_000)  # ~2 MB
    code, output, _, _ = _run(tmp_path, monkeypatch, ["--config", str(path)])
    assert code == 2 and "larger than" in output, output
    code, output, _, _ = _run(tmp_path, monkeypatch, ["--set", "ppo.learning_rate=" + "9" * 20_000])
    assert code == 2 and "longer than" in output and len(output) < 2000, output


def test_error_messages_echo_only_an_excerpt_of_the_input(tmp_path, monkeypatch):
    code, output, _, _ = _run(tmp_path, monkeypatch, ["--set", "tracking.experiment=" + "x" * 900])
    assert code == 2 and "tracking.experiment" in output, output
    assert len(output) < 1000, len(output)


def test_a_config_that_cannot_fit_in_memory_is_refused_before_compiling(tmp_path, monkeypatch):
    code, output, seconds, home = _run(
        tmp_path,
        monkeypatch,
        [
            "--set",
            "env.num_envs=65536",
            "--set",
            "ppo.batch_size=65536",
            "--set",
            "ppo.minibatch_size=65536",
            "--set",
            "ppo.hidden_sizes=[4096, 4096, 4096, 4096, 4096, 4096, 4096, 4096]",
        ],
    )
    assert code == 2 and "memory" in output and "GiB" in output, output
    assert seconds < 10
    _nothing_written(tmp_path, home)
    monkeypatch.setenv("PPO_MAX_MEMORY_GB", "0.0001")  # the limit can be set; the shipped config is tiny
    code, output, _, _ = _run(tmp_path, monkeypatch, ["--set", "train.max_env_steps=1024"])
    assert code == 2 and "PPO_MAX_MEMORY_GB" in output, output


def test_an_empty_ppo_home_means_unset(tmp_path, monkeypatch):
    from ppo.config import ppo_home

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PPO_HOME", "")
    assert ppo_home() == (tmp_path / ".ppo").resolve()  # not the current directory itself
    monkeypatch.setenv("PPO_HOME", "   ")
    assert ppo_home() == (tmp_path / ".ppo").resolve()


def test_make_treats_an_empty_ppo_home_as_unset(tmp_path):
    import subprocess

    from tests.helpers import ROOT

    out = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "print-home"],
        env={"PATH": "/usr/bin:/bin", "PPO_HOME": ""},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(ROOT / ".ppo")
