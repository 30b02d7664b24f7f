"""The ``ppo`` console script (flows/entry.py): the command's exit status and output, every exit handler
run, the interpreter's teardown skipped."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.helpers import ROOT


def _run(tmp_path, argv: list[str], command: str = "") -> subprocess.CompletedProcess[str]:
    """``flows.entry.main()`` with ``argv``, in a fresh interpreter; ``command`` runs first (as part of the
    command's work, after the entry point registered its handler)."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.argv = ["ppo", *{argv!r}]
        from flows.cli import app as real_app
        from flows.entry import main

        def app():
            {command or "pass"}
            real_app()

        main(app)
        """
    )
    env = {**os.environ, "PPO_HOME": str(tmp_path / "home")}
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=100
    )


def test_the_console_script_and_python_m_flows_cli_go_through_the_entry_point(tmp_path):
    # main() as the console script calls it (no app: it imports flows.cli itself, after its handler is
    # registered), and python -m flows.cli: both leave with the command's status and all of its output
    env = {**os.environ, "PPO_HOME": str(tmp_path)}
    for argv in (
        [
            sys.executable,
            "-c",
            "import sys; sys.argv = ['ppo', '--help']; from flows.entry import main; main()",
        ],
        [sys.executable, "-m", "flows.cli", "--help"],
    ):
        out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=100)
        assert out.returncode == 0, out.stderr
        assert "pipeline" in out.stdout and "sweep" in out.stdout


def test_a_result_that_cannot_be_written_is_not_a_success(tmp_path):
    # the pipeline's JSON line to a full disk: it stays in stdout's buffer until the last flush, which
    # fails; Python says 120 when it cannot flush stdout at exit, and so does ppo (not the command's 0)
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    script = (
        "from flows.entry import main\n"
        "def app():\n"
        '    print(\'{"outcome": "promoted"}\')\n'
        "    raise SystemExit(0)\n"
        "main(app)\n"
    )
    with open("/dev/full", "w") as full:
        out = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            # block-buffered stdout, as in a plain shell (this one may export PYTHONUNBUFFERED)
            env={
                **{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
                "PPO_HOME": str(tmp_path),
            },
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=100,
        )
    assert out.returncode == 120, out.stderr


def test_help_exits_0_with_all_of_its_output(tmp_path):
    out = _run(tmp_path, ["--help"])
    assert out.returncode == 0, out.stderr
    for command in ("train", "pipeline", "sweep", "promote", "ui"):
        assert command in out.stdout


def test_a_bad_config_keeps_its_exit_status_and_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("ppo:\n  learning_rate: -1\n")
    out = _run(tmp_path, ["pipeline", "-c", str(bad)])
    assert out.returncode == 2
    assert "learning_rate" in out.stderr


def test_exit_handlers_registered_by_the_command_run_and_teardown_is_skipped(tmp_path):
    ran, finalised = tmp_path / "handler-ran", tmp_path / "finalised"
    command = (
        "import atexit, os; "
        f"atexit.register(lambda: open({str(ran)!r}, 'w').write('ok')); "
        # an object that only the interpreter's teardown would finalise (it clears __main__'s names)
        "sys.modules['__main__'].probe = type('P', (), {'__del__': lambda self, o=os.open, c=os.close: "
        f"c(o({str(finalised)!r}, os.O_CREAT | os.O_WRONLY))}})()"
    )
    out = _run(tmp_path, ["--help"], command)
    assert out.returncode == 0, out.stderr
    assert ran.read_text() == "ok"
    assert not finalised.exists()


@pytest.mark.parametrize(("code", "status"), [(None, 0), (4, 4), ("a message", 1)])
def test_the_status_is_what_python_would_give(code, status):
    from flows.entry import _status

    assert _status(code) == status


def test_a_command_ending_while_its_program_compiles_ahead_does_not_wait_for_it(tmp_path):
    # a Ctrl-C during ppo pipeline's start-up: the compile thread is a daemon, the exit does not join it,
    # and the process leaves (os._exit) without finalising under it (which would crash: SIGSEGV)
    done = tmp_path / "compile-done-at-exit"
    command = (
        "import atexit, threading; "
        "from tests.helpers import small_config; "
        "from ppo.trainer import PPOTrainer; "
        "from ppo.runtime import _COMPILED; "
        "PPOTrainer(config=small_config()).runtime.compile_ahead(2); "
        "(job,) = _COMPILED.values(); "
        "(thread,) = [t for t in threading.enumerate() if t.name == 'ppo-compile']; "
        f"atexit.register(lambda: open({str(done)!r}, 'w').write(f'{{thread.daemon}} {{job.done()}}')); "
        "raise SystemExit(130)"  # what click makes of the interrupted command's typer.Exit(130)
    )
    out = _run(tmp_path, ["--help"], command)
    assert out.returncode == 130, out.stderr[-2000:]
    assert done.read_text() == "True False"
