"""Watch an agent: record a registered model's greedy episodes in the real environment as an MP4.

What RL Zoo's ``record_video`` / ``enjoy`` do for SB3 models: the model is the served one (downloaded and
checked against its registered digest, then run through the same NumPy forward pass as ``ppo serve``), the
frames are the real gymnasium env's ``rgb_array`` rendering, and the video is H.264 in an MP4 (PyAV, the
``video`` extra: FFmpeg's libraries in a wheel, no system ffmpeg needed).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


class RecordError(RuntimeError):
    """The model cannot be recorded (no such model, an env without a renderable twin, no encoder)."""


def _even(frame: np.ndarray) -> np.ndarray:
    """H.264 in yuv420p needs even width and height: pad the last row/column by repetition."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _rgb(frame: Any) -> np.ndarray:
    """A gymnasium frame as uint8 RGB at the env's own size; MinAtar's float grids (one pixel per cell)
    are coloured and enlarged as in the report's GIF."""
    frame = np.asarray(frame)
    if frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[0] >= 100:
        return frame[..., :3]
    from ppo.report import _picture

    return np.asarray(_picture(frame).convert("RGB"), dtype=np.uint8)


def record(
    model_uri: str,
    out: Path,
    episodes: int = 3,
    seed: int = 0,
    fps: int | None = None,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Play ``episodes`` greedy episodes of the model at ``model_uri`` (reset seeds ``seed``, ``seed+1``,
    ...) in its env's real gymnasium twin and write them, one after another, to the MP4 ``out``.

    Returns what was recorded: the path, the env, each episode's return and length, frames and fps.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    try:
        import av
    except ImportError:
        raise RecordError("recording needs PyAV: pip install -e '.[video]' (part of make install)") from None
    import yaml

    from ppo.config import build_config
    from ppo.envs import env_spec, make_gymnasium_env
    from ppo.tracking.registry import download_verified, load_model

    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")  # pygame renders offscreen; no sound card here
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = download_verified(model_uri, tmp)
        except FileNotFoundError as e:
            raise RecordError(str(e)) from None
        config = build_config(yaml.safe_load((local / "artifacts" / "config.yaml").read_text()))
        model = load_model(str(local))  # the served model: its NumPy forward pass, as ppo serve runs it
        env_id = config.env.id
        if env_spec(env_id).evaluates_on_jax:
            raise RecordError(f"{env_id} has no gymnasium twin to render: it is evaluated on its JAX env")
        env = make_gymnasium_env(
            env_id, config.env.max_steps_per_episode, env_checker=False, render_mode="rgb_array"
        )
        rate = int(fps or env.metadata.get("render_fps") or 30)
        out.parent.mkdir(parents=True, exist_ok=True)
        partial = out.with_name(out.name + ".tmp.mp4")
        container = av.open(str(partial), mode="w")
        stream: Any = None
        returns, lengths, frames = [], [], 0
        try:
            for i in range(episodes):
                obs, _ = env.reset(seed=seed + i)
                total, steps, done = 0.0, 0, False
                while True:
                    frame = env.render()
                    if not isinstance(frame, np.ndarray):
                        raise RecordError(f"{env_id} does not render rgb_array frames")
                    picture = _even(_rgb(frame))
                    if stream is None:
                        stream = container.add_stream("libx264", rate=rate)
                        stream.height, stream.width = picture.shape[:2]
                        stream.pix_fmt = "yuv420p"
                    for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                        container.mux(packet)
                    frames += 1
                    if done or (max_steps is not None and steps >= max_steps):
                        break
                    action = model.predict(np.asarray(obs, np.float32)[None])[0]
                    obs, reward, terminated, truncated, _ = env.step(action)
                    total, steps, done = total + float(reward), steps + 1, bool(terminated or truncated)
                returns.append(total)
                lengths.append(steps)
            for packet in stream.encode():  # flush the encoder
                container.mux(packet)
        except BaseException:
            container.close()
            partial.unlink(missing_ok=True)
            raise
        finally:
            env.close()
        container.close()
        os.replace(partial, out)  # whole or not at all
    return {
        "path": str(out),
        "model": model_uri,
        "env": env_id,
        "returns": returns,
        "lengths": lengths,
        "frames": frames,
        "fps": rate,
    }
