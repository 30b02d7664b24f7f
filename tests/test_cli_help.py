"""The CLI's help reads as written for people: no reST double backticks, no ``<bool>`` type labels on
flags, and every option says what it does."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from flows.cli import app

COMMAND = typer.main.get_command(app)
NAMES = sorted(COMMAND.commands)  # type: ignore[attr-defined]


def test_every_command_is_listed_with_its_help():
    out = CliRunner().invoke(app, ["--help"], terminal_width=100).output
    assert {"train", "evaluate", "serve", "pipeline", "sweep", "promote", "ui"} <= set(NAMES)
    for name in NAMES:
        assert name in out
    assert "``" not in out and "<bool>" not in out, out


@pytest.mark.parametrize("name", NAMES)
def test_a_commands_help_has_no_markup_noise_and_every_option_is_explained(name):
    out = CliRunner().invoke(app, [name, "--help"], terminal_width=100).output
    assert "Usage:" in out, out
    assert "``" not in out, out
    assert "<bool>" not in out and "list[" not in out, out  # Python types are not what to type
    command = COMMAND.commands[name]  # type: ignore[attr-defined]
    silent = [
        p.opts[0] for p in command.params if getattr(p, "param_type_name", "") == "option" and not p.help
    ]
    assert silent == [], f"options of `ppo {name}` without help text: {silent}"
