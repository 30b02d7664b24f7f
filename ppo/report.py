"""Run reports: learning curve, losses, evaluation returns, a policy GIF, and report.md / report.html.

Everything is written into one folder; ``report.html`` embeds the images (base64), so it is one
self-contained file that opens anywhere.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ppo import atomic


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _seed_columns(history: list[dict[str, Any]], prefix: str) -> dict[str, np.ndarray]:
    keys = sorted(
        {k for row in history for k in row if k.startswith(prefix + "/seed_")},
        key=lambda k: int(k.rsplit("_", 1)[1]),
    )
    return {
        k.rsplit("/", 1)[1]: np.array([np.nan if row.get(k) is None else row[k] for row in history], float)
        for k in keys
    }


def return_bounds(env_id: str, max_steps_per_episode: int | None) -> tuple[float, float] | None:
    """The lowest and highest return an episode of ``env_id`` can have under the time limit, or None.

    Read off the env table (:data:`ppo.envs.ENV_SPECS`): the per-step reward range times the time limit,
    plus the one-time bonus (CartPole-v1 under its 500 steps: (0, 500)). A per-step range of (0, 0) means
    the table does not know it (LunarLander, Brax, a user's or a plain gymnasium env): then None, and
    nothing is clipped, since a made-up range would hide what the agent really returned.
    """
    from ppo.envs import env_spec

    try:
        spec = env_spec(env_id)
    except (ValueError, ImportError):  # an env this process cannot resolve: no range, no clipping
        return None
    low, high = spec.reward_per_step
    if low == 0.0 and high == 0.0:
        return None
    steps = max_steps_per_episode or spec.max_episode_steps()
    return float(low * steps + min(spec.bonus, 0.0)), float(high * steps + max(spec.bonus, 0.0))


def _iqm_band(data: np.ndarray, confidence: float = 0.95, n_boot: int = 2000) -> tuple[np.ndarray, ...]:
    """Per point (column) of ``data`` ``[seeds, points]``: the IQM over the seeds that have a value there
    and its percentile-bootstrap CI, seeds resampled with replacement (rliable's interval estimate).

    A Student-t interval on three seeds multiplies their spread by 4.3 and went past the possible returns
    (CartPole: 830 above a 500 cap); a percentile bootstrap stays within the seeds' own values. With
    one seed at a point there is no interval (NaN: the band has a gap there).
    """
    from ppo.stats import bootstrap_ci, iqm

    mid, low, high = (np.full(data.shape[1], np.nan) for _ in range(3))
    for t in range(data.shape[1]):
        col = data[:, t][np.isfinite(data[:, t])]
        if col.size == 1:
            mid[t] = col[0]
        elif col.size > 1:
            # one "episode" per seed: the bootstrap draws seeds; seed=0 at every point draws the same
            # resampled seed sets along the curve, so the band is one smooth estimate, not jittery noise
            ci = bootstrap_ci(col[:, None], iqm, n_boot=n_boot, confidence=confidence, seed=0)
            mid[t], low[t], high[t] = ci["point"], ci["ci_low"], ci["ci_high"]
    return mid, low, high


def learning_curve(
    history: list[dict[str, Any]],
    target: float | None,
    path: Path,
    env_id: str = "",
    return_range: tuple[float, float] | None = None,
) -> Path:
    """Episode return vs env steps: IQM over seeds with a 95% percentile-bootstrap band over seeds, thin
    per-seed lines. ``return_range`` (:func:`return_bounds`), when known, clips the IQM and its band: no
    summary may claim a return the env cannot give. The per-seed lines stay raw, so a value outside the
    range (a bug upstream) still shows."""
    plt = _plt()
    steps = np.array([row["env_steps"] for row in history], float)
    per_seed = _seed_columns(history, "episode_return")
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    if per_seed:
        data = np.vstack(list(per_seed.values()))
        for name, ys in per_seed.items():
            ax.plot(
                steps, ys, lw=0.8, alpha=0.35, label=name.replace("_", " ") if len(per_seed) <= 4 else None
            )
        mid, low, high = _iqm_band(data)
        if return_range is not None:
            mid, low, high = (np.clip(a, *return_range) for a in (mid, low, high))
        seeds = data.shape[0]
        ax.plot(steps, mid, lw=2.2, color="C0", label=f"IQM over {seeds} seeds" if seeds > 1 else "1 seed")
        if seeds > 1:
            ax.fill_between(
                steps, low, high, color="C0", alpha=0.2, label="95% bootstrap CI of the IQM (seeds resampled)"
            )
    if target is not None and per_seed:
        lo, hi = np.nanmin(data), np.nanmax(data)
        span = max(hi - lo, 1.0)
        if lo - span <= target <= hi + span:  # an unreachable target would squash the curve to a line
            ax.axhline(target, color="C3", ls="--", lw=1.2, label=f"target {target:g}")
    ax.set_xlabel("environment steps (per seed)")
    ax.set_ylabel("training episode return")
    ax.set_title(f"Learning curve {env_id}".strip())
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return path


def losses_plot(history: list[dict[str, Any]], path: Path) -> Path:
    plt = _plt()
    steps = np.array([row["env_steps"] for row in history], float)
    keys = [
        ("loss/policy", "policy loss"),
        ("loss/value", "value loss"),
        ("loss/entropy", "entropy"),
        ("loss/approx_kl", "approx. KL"),
        ("loss/clip_fraction", "clip fraction"),
        ("grad_norm", "grad norm"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(11, 5.5), dpi=110)
    for ax, (key, label) in zip(axes.flat, keys, strict=True):
        ax.plot(steps, [row.get(key, np.nan) for row in history], color="C1")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("env steps", fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("PPO losses and diagnostics (mean over seeds, per chunk)")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return path


def _histogram_bins(values: np.ndarray, also_shown: float | None) -> np.ndarray:
    """Bin edges for ``values`` whose bars stay visible on an axis that also shows ``also_shown`` (the
    gate's ``min_return`` line).

    Fixed bins of (max - min + 2) / 29 made a hairline when every episode returned the same value (all
    500 on CartPole) and the gate's ``min_return`` line widened the axis: then one bin, centred on the
    value, 1% of it (at least 1, at least 1/25 of the axis) wide. Otherwise a bin is at least 1/60 of
    the axis wide.
    """
    lo, hi = float(values.min()), float(values.max())
    shown = hi - lo if also_shown is None else max(hi, also_shown) - min(lo, also_shown)
    if hi == lo:
        width = max(1.0, 0.01 * abs(lo), shown / 25)
        return np.array([lo - width / 2, lo + width / 2])
    width = max((hi - lo) / 29, shown / 60)
    n = int(np.ceil((hi - lo) / width)) + 1  # half a bin of room on either side
    return (lo + hi) / 2 + width * (np.arange(n + 1) - n / 2)


def eval_returns_plot(
    candidate: np.ndarray,
    champion: np.ndarray | None,
    path: Path,
    min_return: float | None = None,
    labels: tuple[str, str] = ("candidate", "champion"),
) -> Path:
    """Histogram of greedy evaluation returns (candidate, and champion on the same start states); a
    policy whose every episode returns the same value gets one visible bar and says so."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    data = [np.asarray(candidate, float).ravel()]
    if champion is not None:
        data.append(np.asarray(champion, float).ravel())
    names = []
    for d, label in zip(data, labels, strict=False):
        same = f", all returned {d[0]:g}" if d.size > 1 and np.all(d == d[0]) else ""
        names.append(f"{label} (n={d.size}{same})")
    values = np.concatenate(data)
    bins = _histogram_bins(values, min_return)
    for i, (d, name) in enumerate(zip(data, names, strict=True)):
        ax.hist(d, bins=bins, alpha=0.55, color=f"C{i}", label=name)
    if min_return is not None:
        ax.axvline(min_return, color="C3", ls="--", label=f"gate min_return {min_return:g}")
    title = "Evaluation returns"
    if values.size > 1 and np.all(values == values[0]):
        title += f": all {values.size} episodes returned {values[0]:g}"
    return _finish(fig, ax, path, "greedy episode return (real gymnasium env)", "episodes", title)


def _picture(frame: np.ndarray) -> Any:
    """One rendered frame as a 300x200 RGB picture. gymnasium's classic-control and box2d envs render uint8;
    minatar renders floats in [0, 1] (a colormap) at one pixel per cell, enlarged without smoothing."""
    from PIL import Image

    if frame.dtype != np.uint8:
        scale = 255.0 if float(np.max(frame, initial=0.0)) <= 1.0 else 1.0
        frame = np.clip(np.asarray(frame, np.float64) * scale, 0, 255).round().astype(np.uint8)
    small = frame.shape[0] < 100
    picture = Image.fromarray(frame)
    factor = frame.shape[1] // 300
    if not small and factor >= 1 and frame.shape[:2] == (200 * factor, 300 * factor):
        # classic control renders 600x400: an exact 2x box reduction, 10x cheaper than a bicubic resize
        return picture.reduce(factor) if factor > 1 else picture
    return picture.resize((300, 200), Image.Resampling.NEAREST if small else Image.Resampling.BICUBIC)


def _profile(returns: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """``[..., episodes]`` -> ``[..., taus]``: the fraction of episodes with a return above each tau."""
    return (returns[..., None] > taus).mean(axis=-2)


def profile_band(
    returns: np.ndarray, taus: np.ndarray, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """The performance profile's percentile-bootstrap band over seeds: ``returns`` ``[seeds, episodes]``,
    seeds resampled with replacement, each with all its episodes, the resample's episodes pooled.

    Every seed has as many episodes, so a resample's pooled profile is the mean of its seeds' profiles:
    ``[n_boot, seeds, taus]`` from the seeds' own, instead of comparing n_boot x all episodes x taus
    (100M booleans for 5 seeds x 100 episodes, 0.4 s)."""
    from ppo.stats import percentile_band

    idx = np.random.default_rng(seed).integers(0, returns.shape[0], size=(n_boot, returns.shape[0]))
    return percentile_band(_profile(returns, taus)[idx].mean(axis=1), confidence)


def performance_profile(
    candidate: np.ndarray,
    champion: np.ndarray | None,
    path: Path,
    return_range: tuple[float, float] | None = None,
    labels: tuple[str, str] = ("candidate", "champion"),
) -> Path:
    """Performance profiles (rliable's plot): for every return threshold tau, the fraction of evaluation
    episodes with a return above tau, for the candidate's seeds ``[seeds, episodes]`` and the champion
    ``[episodes]`` side by side; the candidate's band is a 95% bootstrap over its seeds. A curve that
    lies above the other everywhere is better at every level of performance, not only on average."""
    plt = _plt()
    cand = np.atleast_2d(np.asarray(candidate, float))
    rows = [cand] + ([np.atleast_2d(np.asarray(champion, float))] if champion is not None else [])
    values = np.concatenate([r.ravel() for r in rows])
    lo, hi = (float(values.min()), float(values.max())) if return_range is None else return_range
    lo, hi = min(lo, float(values.min())), max(hi, float(values.max()))
    taus = np.linspace(lo, hi, 201) if hi > lo else np.array([lo - 1.0, lo, lo + 1.0])

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for i, (r, label) in enumerate(zip(rows, labels, strict=False)):
        ax.plot(
            taus,
            _profile(r.ravel(), taus),
            lw=2,
            color=f"C{i}",
            label=f"{label} ({r.size} episodes)",
        )
        if r.shape[0] > 1:  # seeds resampled with replacement, each with all its episodes
            ax.fill_between(taus, *profile_band(r, taus), color=f"C{i}", alpha=0.2)
    ax.set_ylim(-0.02, 1.02)
    title = "Performance profile (greedy evaluation episodes)"
    return _finish(fig, ax, path, "return threshold tau", "fraction of episodes with return > tau", title)


def policy_gif(
    agent: Any, env_id: str, path: Path, seed: int = 0, max_frames: int = 250, every: int = 2
) -> Path | None:
    """Render the greedy policy in the real gymnasium env (``rgb_array``) into an animated GIF; ``None``
    when the env cannot render (a user's env without ``render``, or one evaluated on its JAX twin)."""
    import os

    from PIL import Image

    from ppo.envs import make_gymnasium_env

    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")  # pygame renders offscreen; no sound card here
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    from ppo.envs import env_spec

    if env_spec(env_id).evaluates_on_jax:
        return None
    env = make_gymnasium_env(env_id, env_checker=False, render_mode="rgb_array")
    obs, _ = env.reset(seed=seed)
    frames: list[Image.Image] = []
    t, done = 0, False
    while not done and len(frames) < max_frames:
        if t % every == 0:
            try:
                frame = env.render()
            except NotImplementedError:
                frame = None
            if not isinstance(frame, np.ndarray):  # rgb_array rendering is not implemented
                env.close()
                return None
            frames.append(_picture(frame))
        obs, _, term, trunc, _ = env.step(agent.predict(np.asarray(obs, np.float32)[None])[0])
        done, t = term or trunc, t + 1
    env.close()
    atomic.write_bytes(path, _gif(frames))
    return path


def _gif(frames: list[Any]) -> bytes:
    """Frames as an animated GIF on one palette, built once from a strip of up to 8 frames spread over the
    clip: PIL's default quantises every frame on its own, which was the report's slowest step (2.7 ms of
    median cut per frame against 0.1 ms of mapping to a palette)."""
    from PIL import Image

    sample = frames[:: max(1, len(frames) // 8)]
    width, height = sample[0].size
    strip = Image.new("RGB", (width, height * len(sample)))
    for i, frame in enumerate(sample):
        strip.paste(frame.convert("RGB"), (0, i * height))
    palette = strip.quantize(colors=255, method=Image.Quantize.MEDIANCUT)
    indexed = [f.convert("RGB").quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    buf = io.BytesIO()
    indexed[0].save(
        buf, format="GIF", save_all=True, append_images=indexed[1:], duration=40, loop=0, optimize=True
    )
    return buf.getvalue()


def _finish(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """Labels, legend and grid of a one-axes plot; saved to ``path`` (atomically) and closed."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, path)
    _plt().close(fig)
    return path


def _save_figure(fig: Any, path: Path) -> None:
    """A figure as PNG, written atomically (a full disk keeps the previous file, leaves no torn one)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic.write_bytes(path, buf.getvalue())


_MIME = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def _data_uri(path: Path) -> str:
    """The image file as a ``data:`` URI: report.html carries its images, so it opens anywhere alone."""
    mime = _MIME.get(path.suffix.lower(), "image/png")
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


_IMAGE_REF = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def prefect_markdown(directory: Path, max_image_bytes: int = 400_000) -> str:
    """report.md's summary (everything before its "## Config") with its images inlined as ``data:`` URIs.

    The Prefect UI renders a markdown artifact in the browser, away from the report folder, so
    report.md's relative image paths do not load there. An image over ``max_image_bytes`` (the policy
    GIF can take megabytes, and the artifact is stored in Prefect's database), or one that is missing,
    is left out with a short note naming its file instead.
    """
    summary = (directory / "report.md").read_text().split("## Config")[0]
    root = directory.resolve()

    def inline(match: re.Match[str]) -> str:
        caption, target = match.group(1), match.group(2)
        if target.startswith("data:image/"):
            return match.group(0)
        path = (directory / target).resolve()
        if root not in path.parents or not path.is_file():  # only the report's own files are read
            return f"*({caption or target}: left out, {target} not found in the report folder)*"
        size = path.stat().st_size
        if size > max_image_bytes:
            return (
                f"*({caption or target}: left out, {target} is {size / 1e6:.1f} MB, over the "
                f"{max_image_bytes / 1e6:g} MB inlined here; see the full report)*"
            )
        return f"![{caption}]({_data_uri(path)})"

    return _IMAGE_REF.sub(inline, summary)


def _table_md(rows: list[tuple[str, Any]]) -> str:
    out = ["| item | value |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def _captions(seeds: int, champion: bool) -> dict[str, str]:
    """What each image shows, for people (report.md's alt text and caption, report.html's figcaption):
    the file names said little ("learning_curve.png") and were all a reader got."""
    curve = (
        f"Learning curve (training episodes, IQM over {seeds} seeds, 95% bootstrap band)"
        if seeds > 1
        else "Learning curve (training episodes, one seed)"
    )
    return {
        "learning_curve": curve,
        "losses": "PPO losses and diagnostics (mean over seeds)",
        "eval_returns": "Greedy evaluation returns" + (", candidate and champion" if champion else ""),
        "performance_profile": "Performance profile: fraction of evaluation episodes above each return"
        + (", candidate and champion" if champion else ""),
        "policy": "The greedy policy in the real environment (animation)",
    }


#: what ``registry["outcome"]`` says when nothing was promoted (tasks.promotion.outcome's words)
_NOT_PROMOTED = {
    "gated_out": "gated out",
    "older_than_champion": "not gated: older than the champion",
    "lost_race": "not promoted: the champion moved while this version was gated (gate it again)",
}


def registry_summary(registry: dict[str, Any] | None) -> str:
    """One sentence for people on what the registry step did: the version registered (if any), whether
    it was promoted and which version is champion now. ``registry=None``: the step had not run when the
    report was written (the flow writes the report before it registers)."""
    if registry is None:
        return "The registry step had not run yet when this report was written (nothing registered yet)."
    name = registry.get("model_name") or "the model"
    version, champion = registry.get("version"), registry.get("champion")
    outcome = registry.get("outcome") or ("promoted" if registry.get("promoted") else "gated_out")
    said = f"{name} version {version} registered" if version else f"{name}: not registered"
    if registry.get("promoted") or outcome == "promoted":
        now = champion or version
        return f"{said}; promoted: champion is now version {now}." if now else f"{said}; promoted."
    if outcome == "already_champion":
        now = champion or version
        return f"{said}; already the champion" + (f" (version {now})." if now else ".")
    why = _NOT_PROMOTED.get(outcome, "not promoted (" + str(outcome).replace("_", " ") + ")")
    verb = "is now" if outcome == "lost_race" else "stays at"  # a lost race: another version moved in
    stays = f"champion {verb} version {champion}" if champion else "no champion yet"
    return f"{said}; {why}, {stays}."


def write_report(
    directory: Path,
    *,
    config: Any,
    result: dict[str, Any],
    gate: dict[str, Any] | None,
    candidate_returns: np.ndarray | None,
    champion_returns: np.ndarray | None,
    agent: Any | None,
    run_id: str | None = None,
    mlflow_url: str | None = None,
    registry: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Write all report files into ``directory``; return ``{name: path}``.

    ``registry``: what the registry step did, for the report's "Registry" section (see
    :func:`registry_summary`): ``model_name``, ``version`` (None: nothing registered), ``promoted``,
    ``champion`` (the champion version after this run, None: none) and ``outcome``
    (:func:`tasks.promotion.outcome`'s word). None (the default): the section says the registry step had
    not run yet, which is the truth for a report written before registering.
    """
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    history = result.get("history") or []
    if history:
        files["learning_curve"] = learning_curve(
            history,
            config.train.target_reward,
            directory / "learning_curve.png",
            config.env.id,
            return_bounds(config.env.id, config.env.max_steps_per_episode),
        )
        files["losses"] = losses_plot(history, directory / "losses.png")
    if candidate_returns is not None:
        min_return = gate["min_return"] if gate and "min_return" in gate else config.gate.min_return
        files["eval_returns"] = eval_returns_plot(
            candidate_returns, champion_returns, directory / "eval_returns.png", min_return
        )
        files["performance_profile"] = performance_profile(
            candidate_returns,
            champion_returns,
            directory / "performance_profile.png",
            return_bounds(config.env.id, config.env.max_steps_per_episode),
        )
    if agent is not None:
        gif = policy_gif(agent, config.env.id, directory / "policy.gif")
        if gif is not None:  # an env that cannot render (a user's twin without render) has no GIF
            files["policy"] = gif

    fe = result.get("final_eval") or {}
    summary = [
        ("env", config.env.id),
        ("seeds", list(config.train.seeds)),
        ("config hash", config.config_hash()),
        ("MLflow run", run_id or "-"),
        ("converged", result.get("converged")),
        ("stop reason", result.get("stop_reason")),
        ("episodes", result.get("episodes")),
        ("env steps / seed", result.get("env_steps")),
        ("best window avg", _fmt(result.get("best_avg_reward"))),
        ("final eval avg", _fmt(fe.get("avg_reward"))),
        ("wall time s", _fmt(result.get("wall_time_s"))),
    ]
    gate_rows: list[tuple[str, Any]] = []
    if gate:

        def ci(low: str, high: str) -> str:
            return f"[{_fmt(gate.get(low))}, {_fmt(gate.get(high))}]" if gate.get(low) is not None else "-"

        gate_rows = [
            ("decision", "PASSED" if gate["passed"] else "FAILED"),
            ("outcome", gate.get("status")),
            ("reason", gate.get("reason")),
            ("mode", gate.get("mode")),
            ("deployed policy: IQM", _fmt(gate.get("iqm"))),
            ("IQM 95% CI", ci("ci_low", "ci_high")),
            ("deployed policy: mean", _fmt(gate.get("mean"))),
            ("mean 95% CI", ci("mean_ci_low", "mean_ci_high")),
            ("min_return", gate.get("min_return")),
            (
                "recipe: seeds reaching min_return",
                f"{gate.get('seeds_reaching', '-')} of {gate.get('seeds')} "
                f"(needs {gate.get('min_seeds', '-')})",
            ),
            ("champion version", gate.get("champion_version") or "none"),
            ("diff to champion (mean)", _fmt(gate.get("diff", "-"))),
            ("diff 95% CI", ci("diff_ci_low", "diff_ci_high")),
            (
                "P(deployed beats champion on a start state)",
                _fmt(gate.get("improvement_probability", "-")),
            ),
            (
                "P(improvement) 95% CI",
                ci("improvement_probability_ci_low", "improvement_probability_ci_high"),
            ),
            ("margin", _fmt(gate.get("margin"))),
            ("episodes (fresh, per policy)", gate.get("episodes")),
            (
                "gymnasium seeds",
                f"{gate.get('eval_seed')} .. {gate.get('eval_seed', 0) + (gate.get('episodes') or 1) - 1}"
                if gate.get("eval_seed") is not None
                else "-",
            ),
        ]
    import yaml

    cfg_yaml = yaml.safe_dump(config.to_dict(), sort_keys=False)
    captions = _captions(len(config.train.seeds), champion_returns is not None)
    images = [(captions.get(n, n.replace("_", " ")), p) for n, p in files.items()]
    registered = registry_summary(registry)
    md = [f"# PPO report: {config.env.id}", "", "## Registry", "", registered, ""]
    md += ["## Summary", _table_md(summary), ""]
    if gate_rows:
        md += ["## Promotion gate", _table_md(gate_rows), ""]
    for caption, p in images:
        md += [f"![{caption}]({p.name})", f"*{caption}*", ""]
    md += ["## Config", "```yaml", cfg_yaml, "```"]
    atomic.write_text(directory / "report.md", "\n".join(md))

    def table_html(rows: list[tuple[str, Any]], table_id: str) -> str:
        body = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
        )
        return f'<table id="{table_id}">{body}</table>'

    def img(caption: str, p: Path) -> str:
        text = html.escape(caption)
        figure = f'<figure><img alt="{text}" src="{_data_uri(p)}">'
        return f"{figure}<figcaption>{text}</figcaption></figure>"

    link = (
        f'<p><a href="{html.escape(mlflow_url)}">MLflow run {html.escape(run_id or "")}</a></p>'
        if mlflow_url
        else ""
    )
    title = html.escape(config.env.id)
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}\n"
        "th,td{border:1px solid #ccc;padding:4px 10px;text-align:left}th{background:#f4f4f4}"
        "img{max-width:100%}\n"
        ".passed{color:#1a7f37}.failed{color:#c62828}pre{background:#f6f8fa;padding:1em}"
    )
    gate_html = ""
    if gate:
        verdict = "passed'>PASSED" if gate["passed"] else "failed'>FAILED"
        gate_html = f"<h2>Promotion gate: <span class='{verdict}</span></h2>" + table_html(gate_rows, "gate")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>PPO report {title}</title>
<style>{style}</style></head><body>
<h1>PPO report: {title}</h1>{link}<h2>Registry</h2><p>{html.escape(registered)}</p>
<h2>Summary</h2>{table_html(summary, "summary")}
{gate_html}
{"".join(img(caption, p) for caption, p in images)}
<h2>Config</h2><pre>{html.escape(cfg_yaml)}</pre></body></html>"""
    atomic.write_text(directory / "report.html", page)
    atomic.write_text(directory / "gate.json", json.dumps(gate or {}, indent=2, default=str))
    out = {n: str(p) for n, p in files.items()}
    out.update(report_md=str(directory / "report.md"), report_html=str(directory / "report.html"))
    return out
