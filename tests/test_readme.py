"""Every code block of the README works as pasted.

Python blocks run, as pasted, in a fresh interpreter (in the repository, a temporary ``$PPO_HOME``).
Shell blocks are checked line by line against what they call, without running the long ones (pipelines,
servers, benchmarks have their own tests): a ``ppo`` command line parses with the real CLI (options,
types, required values) and its files exist; a make target exists (``make -n``); a deployment exists in
prefect.yaml; a script exists and answers ``--help``; a curl body is valid JSON with a served model's
input shape. Blocks that are not code are fenced as ``text``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml

from tests.helpers import ROOT

README = ROOT / "README.md"
FENCE = re.compile(r"^```([a-z]*)\n(.*?)^```$", re.S | re.M)


def blocks(kind: str) -> list[tuple[int, str]]:
    text = README.read_text()
    return [
        (text[: m.start()].count("\n") + 1, m.group(2)) for m in FENCE.finditer(text) if m.group(1) == kind
    ]


def shell_lines() -> list[tuple[int, str]]:
    """(README line, command) for every command of every bash block; continuations joined, comments cut."""
    out = []
    for start, body in blocks("bash"):
        pending, first = "", 0
        for offset, raw in enumerate(body.splitlines()):
            if not pending:
                first = start + 1 + offset
            pending += raw.rstrip("\\").rstrip() + " " if raw.endswith("\\") else raw
            if raw.endswith("\\"):
                continue
            command, pending = pending.strip(), ""
            if shlex.split(command, comments=True):
                out.append((first, command))
    return out


def _ids(value: object) -> str:
    return f"line{value}" if isinstance(value, int) else ""


def test_every_fenced_block_names_its_language():
    text = README.read_text()
    kinds = {m.group(1) for m in FENCE.finditer(text)}
    assert "" not in kinds, "fence plain blocks as ```text so readers (and this test) know they are not code"
    assert kinds <= {"bash", "python", "text", "yaml", "json"}, kinds


@pytest.mark.parametrize("start,body", blocks("python"), ids=_ids)
def test_python_blocks_run_as_pasted(start, body, tmp_path):
    env = {**os.environ, "PPO_HOME": str(tmp_path / "home")}
    out = subprocess.run(
        [sys.executable, "-c", body], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, f"README.md line {start}:\n{out.stderr[-3000:]}"


def _check_ppo(argv: list[str]) -> None:
    from flows.cli import app

    group = typer.main.get_command(app)
    name, args = argv[0], argv[1:]
    command = group.commands[name]  # type: ignore[attr-defined]
    ctx = command.make_context(name, list(args), resilient_parsing=False)  # parses and converts every option
    for key in ("config", "spec"):
        path = ctx.params.get(key)
        if path is not None:
            assert (ROOT / path).is_file(), f"{path} does not exist"


@pytest.mark.parametrize("line,command", shell_lines(), ids=_ids)
def test_shell_lines_are_valid_commands(line, command):
    words = shlex.split(command, comments=True)
    while words and re.match(r"^[A-Z_]+=", words[0]):  # VAR=value prefixes
        words = words[1:]
    head, rest = words[0], words[1:]
    where = f"README.md line {line}: {command}"
    if head == "make":
        assert rest, where
        out = subprocess.run(["make", "-n", *rest], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"{where}\n{out.stderr}"
    elif head == ".venv/bin/ppo":
        _check_ppo(rest)
    elif head == ".venv/bin/prefect":
        assert rest[:2] == ["deployment", "run"], where
        flow, deployment = rest[2].split("/")
        spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
        names = {d["name"]: d["entrypoint"] for d in spec["deployments"]}
        assert deployment in names, where
        assert names[deployment].split(":")[1].replace("_", "-").startswith(flow.split("-")[0]), where
    elif head == "source":
        assert rest[0] == ".ppo/run/serve.env", where
        assert "serve.env" in (ROOT / "scripts" / "serve.sh").read_text(), where
    elif head == "curl":
        body = json.loads(rest[rest.index("-d") + 1])
        assert isinstance(body["inputs"], list) and all(len(row) == 4 for row in body["inputs"]), where
    elif head == ".venv/bin/python":
        script = ROOT / rest[0]
        assert script.is_file(), where
        out = subprocess.run(
            [sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, f"{where}\n{out.stderr[-2000:]}"
    else:
        pytest.fail(f"{where}: this test does not know how to check `{head}`; teach it")


def test_the_readme_promises_what_the_served_model_answers():
    # the curl example's comment states the shape of the answer, not actions a particular model gives
    text = README.read_text()
    assert '{"predictions": [1, 0]}' not in text
    assert Path(README).read_text().count("```") % 2 == 0
