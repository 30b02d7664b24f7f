"""The served model's HTTP app: a lean ASGI app over the pyfunc model and its signature (``ppo serve``).

Why not MLflow's scoring server as shipped (FastAPI, ``mlflow models serve``): it reads any body whole (a
96 MB body took 2.8 GB), echoes the whole input in its error messages (``Failed to predict data '...'``),
answers 500 to deeply nested JSON, and runs every request through FastAPI's middleware, a worker thread and
pandas-oriented parsing: 612 req/s for one client on this 2-core machine, 443 req/s at p99 376 ms for 32.
Wrapping it in a middleware would bound the body but keep its per-request cost and its messages; this app
keeps the same contract and model instead:

* ``GET /ping``, ``GET /health`` → 200; ``GET /version`` → MLflow's version;
* ``POST /invocations`` with ``Content-Type: application/json`` and one of ``{"inputs": ...}``,
  ``{"instances": ...}``, ``{"dataframe_split": {"columns": ..., "data": ...}}`` or
  ``{"dataframe_records": [...]}`` → ``{"predictions": [...]}``;
* errors as MLflow writes them: ``{"error_code": "...", "message": "..."}`` with 400 (bad input), 413 (body
  over the limit), 415 (not JSON), 404/405.

The model is the same pyfunc (``mlflow.pyfunc.load_model``: its ``load_context`` verifies the artifact
digests) and the input is checked against its logged signature (float32 tensor ``(-1, *obs_shape)``)
before ``PPOPolicyModel.predict`` (shape, finiteness) runs. Bounds: bodies over ``max_body`` bytes (8 MiB by
default) are refused with 413 before they are read whole; JSON nested deeper than ``max_depth`` is refused
with 400 (the parser's recursion never reaches the interpreter's limit); messages quote at most
:data:`EXCERPT` characters of the input.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np

#: the default body limit (bytes): a batch of 256 observations is a few KiB; 8 MiB leaves room for big
#: batches and bounds memory (a parsed body takes about 10-30x its size in Python objects)
MAX_BODY = 8 * 1024 * 1024
#: nesting deeper than this is refused (a batch of observations of rank r is r + 2 deep in ``inputs``)
MAX_DEPTH = 32
#: at most this many characters of the input are quoted in an error message
EXCERPT = 120
#: bodies above this size are parsed and predicted in a worker thread, so that one big request does not
#: hold up the small ones on the event loop
INLINE_BODY = 64 * 1024

#: every byte but the four brackets, deleted to measure nesting
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def excerpt(value: Any, limit: int = EXCERPT) -> str:
    """A short quote of the input for a message: at most ``limit`` characters, with the full size."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters in all)"


class BadRequest(ValueError):
    """A request the client must fix: HTTP ``status`` with MLflow's error code and a short message."""

    def __init__(self, message: str, status: int = 400, code: str = "BAD_REQUEST") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def json_depth_ok(body: bytes, max_depth: int) -> bool:
    """Whether no bracket in ``body`` is nested deeper than ``max_depth`` (brackets inside strings count
    too, which errs on the safe side), without parsing it: the brackets alone (``bytes.translate``, in C)
    and their running depth (a NumPy cumulative sum): ~30 us for a batch of 256, where a Python loop took
    0.5 ms. A body with at most ``max_depth`` opening brackets costs two ``bytes.count``."""
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return True
    brackets = np.frombuffer(body.translate(None, _NOT_BRACKETS), np.uint8)
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1).astype(np.int32)
    return int(np.cumsum(steps, dtype=np.int32).max()) <= max_depth


class ModelApp:
    """ASGI app serving ``model`` (an ``mlflow.pyfunc.PyFuncModel`` of :class:`PPOPolicyModel`)."""

    def __init__(self, model: Any, max_body: int = MAX_BODY, max_depth: int = MAX_DEPTH) -> None:
        import mlflow

        self.model = model
        self.python_model = model.unwrap_python_model()
        spec = model.metadata.get_input_schema().inputs[0]
        self.dtype = np.dtype(spec.type)
        self.shape = tuple(spec.shape)  # (-1, *obs_shape)
        self.max_body = max_body
        self.max_depth = max_depth
        self.version = mlflow.__version__.encode()

    # -- input -------------------------------------------------------------------------------------
    def parse(self, body: bytes) -> np.ndarray:
        """The observations in a JSON body, as the signature's dtype and shape, or :class:`BadRequest`."""
        if not body:
            raise BadRequest('the body is empty; expected JSON such as {"inputs": [[...], ...]}')
        if not json_depth_ok(body, self.max_depth):
            raise BadRequest(f"the JSON is nested deeper than {self.max_depth} levels")
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as e:
            raise BadRequest(f"the body is not valid JSON ({type(e).__name__}: {excerpt(e)})") from None
        if not isinstance(doc, dict):
            raise BadRequest(f"expected a JSON object with 'inputs' or 'instances'; got {type(doc).__name__}")
        keys = [k for k in ("inputs", "instances", "dataframe_split", "dataframe_records") if k in doc]
        if len(keys) != 1:
            raise BadRequest(
                "expected exactly one of 'inputs', 'instances', 'dataframe_split', 'dataframe_records'; "
                f"got keys {excerpt(sorted(doc))}"
            )
        data = doc[keys[0]]
        if keys[0] == "dataframe_split":
            if not isinstance(data, dict) or "data" not in data:
                raise BadRequest("dataframe_split needs {'columns': [...], 'data': [[...], ...]}")
            data = data["data"]
        elif keys[0] == "dataframe_records":
            if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
                raise BadRequest("dataframe_records needs a list of {column: value} objects")
            data = [list(r.values()) for r in data]
        try:
            array = np.asarray(data, dtype=self.dtype)
        except (TypeError, ValueError) as e:
            raise BadRequest(
                f"observations must be numbers in a regular (not ragged) array: {excerpt(e)}",
                code="INVALID_PARAMETER_VALUE",
            ) from None
        want = self.shape[1:]
        if array.ndim != len(self.shape) or array.shape[1:] != want:
            raise BadRequest(
                f"observations have shape {excerpt(array.shape)}; the model's signature expects "
                f"(n, {', '.join(map(str, want))})",
                code="INVALID_PARAMETER_VALUE",
            )
        return array

    def invoke(self, body: bytes) -> bytes:
        """Predictions for a body, as the JSON reply (raises :class:`BadRequest`)."""
        from mlflow.exceptions import MlflowException

        obs = self.parse(body)
        try:
            actions = self.python_model.predict(None, obs)
        except MlflowException as e:
            raise BadRequest(excerpt(e.message, 300), code="INVALID_PARAMETER_VALUE") from None
        return b'{"predictions": ' + json.dumps(np.asarray(actions).tolist()).encode() + b"}"

    # -- ASGI --------------------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        try:
            if path in ("/ping", "/health"):
                if method not in ("GET", "HEAD"):
                    raise BadRequest(f"{method} is not allowed on {path}", 405, "BAD_REQUEST")
                return await _reply(send, 200, b"\n")
            if path == "/version":
                return await _reply(send, 200, self.version)
            if path != "/invocations":
                raise BadRequest(f"no such endpoint: {excerpt(path, 60)}", 404, "ENDPOINT_NOT_FOUND")
            if method != "POST":
                raise BadRequest(f"{method} is not allowed on /invocations; use POST", 405)
            headers = dict(scope["headers"])
            mime = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if mime != b"application/json":
                raise BadRequest(f"this model takes application/json only; got {excerpt(mime, 60)!r}", 415)
            body = await self._body(headers, receive)
            if len(body) <= INLINE_BODY:
                reply = self.invoke(body)
            else:
                reply = await asyncio.to_thread(self.invoke, body)
            await _reply(send, 200, reply)
        except BadRequest as e:
            error = json.dumps({"error_code": e.code, "message": str(e)}).encode()
            await _reply(send, e.status, error)

    async def _body(self, headers: dict[bytes, bytes], receive: Any) -> bytes:
        """The request body, refused with 413 as soon as it is known to exceed ``max_body`` (from its
        Content-Length, or while a chunked body arrives): it is never held whole."""
        too_big = BadRequest(
            f"the body is larger than the limit of {self.max_body:,} bytes (ppo serve --max-body-mb)",
            413,
            "REQUEST_LIMIT_EXCEEDED",
        )
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise too_big
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise BadRequest("the client went away", 400)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise too_big
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _reply(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def serve(
    local_model: str, host: str, port: int, max_body: int = MAX_BODY, max_depth: int = MAX_DEPTH
) -> None:
    """Load the model folder (its ``load_context`` verifies the artifact digests) and serve it with
    uvicorn: one process, uvloop when installed, access log off (it costs more than a prediction).

    NumPy's BLAS is held to one thread: a prediction is a few small matmuls, and OpenBLAS's worker threads
    spinning beside the event loop on a busy 2-core machine made a batch of 256 take 11.6 ms instead of
    0.46 ms. (``threadpoolctl`` comes with MLflow's scikit-learn; without it the limit is skipped.)"""
    import mlflow
    import uvicorn

    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - an install without scikit-learn
        pass

    model = mlflow.pyfunc.load_model(local_model)
    app = ModelApp(model, max_body=max_body, max_depth=max_depth)
    uvicorn.run(
        app,
        host=host,
        port=port,
        access_log=False,
        log_level="warning",
        lifespan="on",
        # uvicorn's own cap on a request line + headers; the body is bounded by the app
        h11_max_incomplete_event_size=64 * 1024,
        timeout_keep_alive=30,
    )
