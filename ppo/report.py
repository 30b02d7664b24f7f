"""Run reports: learning curve, losses, evaluation returns, a policy GIF, and report.md / report.html.

Everything is written into one folder; ``report.html`` embeds the images (base64), so it is one
self-contained file that opens anywhere.
"""

from __future__ import annotations

import base64
import html
import io
import json
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


# two-sided 95% Student-t quantiles by degrees of freedom (seeds - 1); 1.96 beyond the table
_T975 = {
    1: 12.706,
    2: 4.303,
    3: 3.182,
    4: 2.776,
    5: 2.571,
    6: 2.447,
    7: 2.365,
    8: 2.306,
    9: 2.262,
    10: 2.228,
    12: 2.179,
    15: 2.131,
    20: 2.086,
    30: 2.042,
}


def t975(df: int) -> float:
    return next((v for k, v in sorted(_T975.items()) if df <= k), 1.96)


def learning_curve(history: list[dict[str, Any]], target: float | None, path: Path, env_id: str = "") -> Path:
    """Episode return vs env steps: mean over seeds with a 95% CI band (Student t), thin per-seed lines."""
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
        with np.errstate(all="ignore"):
            m = np.nanmean(data, axis=0)
            n = np.sum(~np.isnan(data), axis=0)
            sem = (
                np.nanstd(data, axis=0, ddof=1) / np.sqrt(np.maximum(n, 1))
                if data.shape[0] > 1
                else np.zeros_like(m)
            )
        ax.plot(steps, m, lw=2.2, color="C0", label=f"mean over {data.shape[0]} seed(s)")
        if data.shape[0] > 1:
            q = t975(data.shape[0] - 1)
            ax.fill_between(steps, m - q * sem, m + q * sem, color="C0", alpha=0.2, label="95% CI over seeds")
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


def eval_returns_plot(
    candidate: np.ndarray,
    champion: np.ndarray | None,
    path: Path,
    min_return: float | None = None,
    labels: tuple[str, str] = ("candidate", "champion"),
) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    data = [np.asarray(candidate, float).ravel()]
    names = [f"{labels[0]} (n={data[0].size})"]
    if champion is not None:
        data.append(np.asarray(champion, float).ravel())
        names.append(f"{labels[1]} (n={data[1].size})")
    lo = min(d.min() for d in data)
    hi = max(d.max() for d in data)
    bins = np.linspace(lo - 1, hi + 1, 30)
    for i, (d, name) in enumerate(zip(data, names, strict=True)):
        ax.hist(d, bins=bins, alpha=0.55, color=f"C{i}", label=name)
    if min_return is not None:
        ax.axvline(min_return, color="C3", ls="--", label=f"gate min_return {min_return:g}")
    ax.set_xlabel("greedy episode return (real gymnasium env)")
    ax.set_ylabel("episodes")
    ax.set_title("Evaluation returns")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return path


def _picture(frame: np.ndarray) -> Any:
    """One rendered frame as a 300x200 RGB picture. gymnasium's classic-control and box2d envs render uint8;
    minatar renders floats in [0, 1] (a colormap) at one pixel per cell, enlarged without smoothing."""
    from PIL import Image

    if frame.dtype != np.uint8:
        scale = 255.0 if float(np.max(frame, initial=0.0)) <= 1.0 else 1.0
        frame = np.clip(np.asarray(frame, np.float64) * scale, 0, 255).round().astype(np.uint8)
    small = frame.shape[0] < 100
    return Image.fromarray(frame).resize(
        (300, 200), Image.Resampling.NEAREST if small else Image.Resampling.BICUBIC
    )


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
    env = make_gymnasium_env(env_id, render_mode="rgb_array")
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
    buf = io.BytesIO()
    frames[0].save(
        buf, format="GIF", save_all=True, append_images=frames[1:], duration=40, loop=0, optimize=True
    )
    atomic.write_bytes(path, buf.getvalue())
    return path


def _save_figure(fig: Any, path: Path) -> None:
    """A figure as PNG, written atomically (a full disk keeps the previous file, leaves no torn one)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic.write_bytes(path, buf.getvalue())


def _table_md(rows: list[tuple[str, Any]]) -> str:
    out = ["| item | value |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


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
) -> dict[str, str]:
    """Write all report files into ``directory``; return ``{name: path}``."""
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    history = result.get("history") or []
    if history:
        files["learning_curve"] = learning_curve(
            history, config.train.target_reward, directory / "learning_curve.png", config.env.id
        )
        files["losses"] = losses_plot(history, directory / "losses.png")
    if candidate_returns is not None:
        min_return = gate["min_return"] if gate and "min_return" in gate else config.gate.min_return
        files["eval_returns"] = eval_returns_plot(
            candidate_returns, champion_returns, directory / "eval_returns.png", min_return
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
    images = [(n, p) for n, p in files.items()]
    md = [f"# PPO report: {config.env.id}", "", "## Summary", _table_md(summary), ""]
    if gate_rows:
        md += ["## Promotion gate", _table_md(gate_rows), ""]
    md += [f"![{n}]({p.name})" for n, p in images] + ["", "## Config", "```yaml", cfg_yaml, "```"]
    atomic.write_text(directory / "report.md", "\n".join(md))

    def table_html(rows: list[tuple[str, Any]], table_id: str) -> str:
        body = "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
        )
        return f'<table id="{table_id}">{body}</table>'

    def img(name: str, p: Path) -> str:
        mime = "image/gif" if p.suffix == ".gif" else "image/png"
        data = base64.b64encode(p.read_bytes()).decode()
        figure = f'<figure><img alt="{name}" src="data:{mime};base64,{data}">'
        return f"{figure}<figcaption>{name}</figcaption></figure>"

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
<h1>PPO report: {title}</h1>{link}<h2>Summary</h2>{table_html(summary, "summary")}
{gate_html}
{"".join(img(n, p) for n, p in images)}
<h2>Config</h2><pre>{html.escape(cfg_yaml)}</pre></body></html>"""
    atomic.write_text(directory / "report.html", page)
    atomic.write_text(directory / "gate.json", json.dumps(gate or {}, indent=2, default=str))
    out = {n: str(p) for n, p in files.items()}
    out.update(report_md=str(directory / "report.md"), report_html=str(directory / "report.html"))
    return out
