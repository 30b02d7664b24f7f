"""The served model under bad input: wrong shapes, NaN/inf, strings, malformed JSON → HTTP 4xx with a
clear message, and the server keeps serving. It listens on 127.0.0.1 only and its artifacts hold no pickle."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import psutil
import pytest

from ppo import PPOTrainer, tracking
from tests.helpers import Background, free_port, register_passed, small_config, venv_env, wait_http

pytestmark = pytest.mark.reliability

BAD = [
    ("too-few-columns", {"inputs": [[1.0, 2.0]]}, "shape"),
    ("too-many-columns", {"inputs": [[0.0] * 5]}, "shape"),
    ("three-dims", {"inputs": [[[0.0] * 4]]}, "shape"),
    ("strings", {"inputs": [["a", "b", "c", "d"]]}, ""),
    ("nan", {"inputs": [[float("nan")] * 4]}, "finite"),
    ("inf", {"inputs": [[0.0, float("inf"), 0.0, 0.0]]}, "finite"),
    ("ragged", {"inputs": [[0.0] * 4, [0.0] * 3]}, ""),
    ("wrong-key", {"observations": [[0.0] * 4]}, ""),
    ("not-json", b"{inputs: [[0, 0, 0, 0]", ""),
    ("empty-body", b"", ""),
]


def _post(url: str, body: object) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return e.code, {"message": raw.decode(errors="replace")}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("served")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PPO_HOME", str(home))
        cfg = small_config(**{"tracking.enabled": True})
        trainer = PPOTrainer(config=cfg, enable_mlflow=True)
        version = register_passed(trainer.train()["run_id"])
        tracking.client()
        import mlflow

        local = mlflow.artifacts.download_artifacts(
            f"models:/ppo-cartpole/{version}", dst_path=str(home / "model")
        )
    port = free_port()
    server = Background(
        [
            __import__("sys").executable,
            "-m",
            "ppo.cli",
            "serve",
            "--model",
            f"models:/ppo-cartpole/{version}",
            "--port",
            str(port),
        ],
        home / "serve.log",
        env=venv_env(PPO_HOME=str(home)),
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", timeout=120, proc=server.proc)
        yield f"http://127.0.0.1:{port}", server, trainer, local
    finally:
        server.stop()


@pytest.mark.parametrize("body,expected", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_observations_get_4xx_and_the_server_keeps_serving(served, body, expected):
    url, _, trainer, _ = served
    status, reply = _post(url + "/invocations", body)
    assert 400 <= status < 500, (status, reply)
    assert reply.get("message") and expected in reply["message"], reply
    obs = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    status, reply = _post(url + "/invocations", {"inputs": obs.tolist()})
    assert status == 200 and reply["predictions"] == trainer.agent.predict(obs).tolist()


def test_listens_on_loopback_only_and_holds_no_pickle(served):
    url, server, _, local = served
    port = int(url.rsplit(":", 1)[1])
    procs = [psutil.Process(server.proc.pid), *psutil.Process(server.proc.pid).children(recursive=True)]
    listening = {
        c.laddr.ip
        for p in procs
        for c in p.net_connections("inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }
    assert listening == {"127.0.0.1"}
    files = [p for p in __import__("pathlib").Path(local).rglob("*") if p.is_file()]
    assert any(f.name == "params.msgpack" for f in files)
    assert not [
        f
        for f in files
        if f.suffix in (".pkl", ".pickle") or f.read_bytes()[:2] in (b"\x80\x04", b"\x80\x05")
    ]


# -- issue 16, item 6: bounded bodies, short messages, deep JSON -------------------------------------


def _rss_mb(server) -> float:
    procs = [psutil.Process(server.proc.pid), *psutil.Process(server.proc.pid).children(recursive=True)]
    return sum(p.memory_info().rss for p in procs) / 2**20


def _still_serves(url: str, trainer) -> None:
    obs = np.random.default_rng(2).normal(size=(2, 4)).astype(np.float32)
    status, reply = _post(url + "/invocations", {"inputs": obs.tolist()})
    assert status == 200 and reply["predictions"] == trainer.agent.predict(obs).tolist()


def test_a_body_over_the_limit_gets_413_without_being_held(served):
    """A 96 MB body took 2.8 GB: now it is refused (413, default limit 8 MiB) and memory stays put."""
    url, server, trainer, _ = served
    before = _rss_mb(server)
    body = b'{"inputs": [' + b"[0.0, 0.0, 0.0, 0.0], " * (96 * 2**20 // 22) + b"[0.0, 0.0, 0.0, 0.0]]}"
    try:
        status, reply = _post(url + "/invocations", body)
    except (ConnectionError, urllib.error.URLError):  # the server may answer and close before all is sent
        status, reply = 413, {"message": "limit"}
    assert status == 413, (status, reply)
    assert "limit" in reply["message"]
    assert _rss_mb(server) - before < 200
    _still_serves(url, trainer)


def test_a_huge_bad_input_is_not_echoed(served):
    """A 5 MB bad input was echoed whole in the error; now the message quotes a short excerpt."""
    url, _, trainer, _ = served
    status, reply = _post(url + "/invocations", {"inputs": [["x" * 5_000_000, 1, 2, 3]]})
    assert 400 <= status < 500, (status, str(reply)[:300])
    assert len(reply["message"]) < 1000, len(reply["message"])
    status, reply = _post(url + "/invocations", b"{not json " + b"y" * 5_000_000)
    assert status == 400 and len(reply["message"]) < 1000, (status, len(str(reply)))
    _still_serves(url, trainer)


@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_deeply_nested_json_gets_400(served, opening):
    """200k-deep JSON answered 500; now 400 with a message saying why."""
    url, _, trainer, _ = served
    closing = "]" if opening == "[" else "}"
    body = ('{"inputs": ' + opening * 200_000 + "0" + closing * 200_000 + "}").encode()
    status, reply = _post(url + "/invocations", body)
    assert status == 400, (status, str(reply)[:300])
    assert "nested" in reply["message"]
    _still_serves(url, trainer)


def test_the_scoring_contract_is_kept(served):
    """The same endpoints and JSON formats as MLflow's scoring server: /ping, /health, /version and the
    ``inputs``, ``instances`` and ``dataframe_split`` bodies give the same predictions."""
    url, _, trainer, _ = served
    for path in ("/ping", "/health", "/version"):
        with urllib.request.urlopen(url + path, timeout=10) as r:
            assert r.status == 200
    obs = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)
    expected = trainer.agent.predict(obs).tolist()
    for body in (
        {"inputs": obs.tolist()},
        {"instances": obs.tolist()},
        {"dataframe_split": {"columns": [0, 1, 2, 3], "data": obs.tolist()}},
    ):
        status, reply = _post(url + "/invocations", body)
        assert status == 200 and reply["predictions"] == expected, (body, reply)
