"""Reports from real training results: several seeds, CartPole and Acrobot; files open and say what they
claim."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from ppo import PPOTrainer
from ppo.report import write_report
from ppo.stats import gate_decision
from tests.helpers import small_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # this module's $PPO_HOME, unset again after it
        mp.setenv("PPO_HOME", str(tmp_path_factory.mktemp("home")))
        trainer = PPOTrainer(config=small_config())
        yield trainer, trainer.train()


def _check(files, expected_gif_frames=2):
    for name in ("learning_curve", "losses", "eval_returns"):
        with Image.open(files[name]) as im:
            assert im.size[0] >= 600 and im.size[1] >= 400
            assert len(set(np.asarray(im.convert("L")).ravel().tolist())) > 10  # not a blank canvas
    with Image.open(files["policy"]) as gif:
        assert gif.n_frames >= expected_gif_frames


def test_report_for_several_seeds_with_champion(trained, tmp_path):
    trainer, result = trained
    returns = trainer.evaluate(num_episodes=8, all_seeds=True, seed=5)["returns"]
    cand = np.asarray(returns).reshape(2, 8)
    champ = np.full(8, 30.0)
    decision = gate_decision(cand, 0, champ, min_return=0.0, margin=10.0, min_seeds=2) | {
        "champion_version": "3"
    }
    files = write_report(
        tmp_path,
        config=trainer.config,
        result=result,
        gate=decision,
        candidate_returns=cand,
        champion_returns=champ,
        agent=trainer.agent,
        run_id="abc123",
    )
    _check(files)
    md = open(files["report_md"]).read()
    assert "## Promotion gate" in md and "champion version | 3" in md and "abc123" in md
    html = open(files["report_html"]).read()
    assert html.count("data:image/png;base64,") == 4 and html.count("data:image/gif;base64,") == 1
    assert 'id="gate"' in html and ("PASSED" in html or "FAILED" in html)


def test_report_for_acrobot(tmp_path, monkeypatch):
    monkeypatch.setenv("PPO_HOME", str(tmp_path / "home"))
    cfg = small_config(
        **{
            "env.id": "Acrobot-v1",
            "train.seeds": [0],
            "train.max_env_steps": 128 * 5 * 2,
            "train.eval_episodes": 2,
            "env.max_steps_per_episode": 100,
        }
    )
    trainer = PPOTrainer(config=cfg)
    result = trainer.train()
    files = write_report(
        tmp_path / "r",
        config=cfg,
        result=result,
        gate=None,
        candidate_returns=np.asarray(result["final_eval"]["returns"]),
        champion_returns=None,
        agent=trainer.agent,
    )
    _check(files)
    assert "Acrobot-v1" in open(files["report_html"]).read()


def test_the_policy_gif_of_a_minatar_game(tmp_path):
    """minatar renders float frames in [0, 1] (PIL cannot take them as they are): the Breakout pipeline
    failed in its report task after 40 minutes of training."""
    from PIL import Image

    from ppo.agent import PPOAgent
    from ppo.envs import env_spec
    from ppo.report import policy_gif

    spec = env_spec("Breakout-MinAtar")
    agent = PPOAgent(spec.observation_dim, spec.action_dim, (16,), observation_shape=spec.observation_shape)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = policy_gif(agent, "Breakout-MinAtar", tmp_path / "policy.gif", max_frames=6)
    # gymnasium's env checker complains about minatar's render ("no render fps", "float64 frames"), which
    # the GIF handles: that is noise in every Breakout pipeline's output, not news for its user
    assert [str(w.message) for w in caught if "passive_env_checker" in w.filename] == []
    assert path is not None
    with Image.open(path) as gif:
        assert gif.n_frames >= 2
        gif.seek(1)
        colours = gif.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is not None and len(colours) > 1  # a picture, not one flat colour


# ---- synthetic inputs: the report's own logic, without training -------------------------------------


@pytest.fixture
def figures(monkeypatch):
    """Every matplotlib figure the report saves, in order (the PNG is still written)."""
    import ppo.report

    saved = []
    original = ppo.report._save_figure

    def keep(fig, path):
        saved.append(fig)
        original(fig, path)

    monkeypatch.setattr(ppo.report, "_save_figure", keep)
    return saved


def _history(per_seed_returns, points=6):
    """Chunks of a run whose seeds' training returns stay as given (one value per seed)."""
    seeds = {f"episode_return/seed_{s}": r for s, r in enumerate(per_seed_returns)}
    return [{"env_steps": 1000 * (i + 1)} | seeds for i in range(points)]


def _synthetic_report(directory, *, seeds=(0, 1, 2), returns=(500.0, 500.0, 200.0), **kwargs):
    cfg = small_config(**{"train.seeds": list(seeds)})
    result = {"history": _history(returns), "converged": False, "episodes": 40, "env_steps": 6000}
    args = {
        "config": cfg,
        "result": result,
        "gate": None,
        "candidate_returns": np.full(8, 500.0),
        "champion_returns": None,
        "agent": None,
        "run_id": "run42",
    } | kwargs
    return write_report(directory, **args)


def _band(ax):
    """The y values of the learning curve's band (fill_between) and of its summary line (the thick one;
    the thin per-seed lines are the raw data)."""
    band = np.concatenate([p.vertices[:, 1] for c in ax.collections for p in c.get_paths()])
    thick = max(ax.lines, key=lambda line: line.get_linewidth())
    return band, np.asarray(thick.get_ydata(), float)


def test_the_learning_curve_band_stays_within_cartpoles_returns(figures, tmp_path):
    """Three CartPole seeds at 500, 500 and 200: a Student-t interval on 3 points reached 830, above
    the 500 an episode can return. The IQM's percentile bootstrap over seeds stays within the seeds'
    own returns (here exactly [200, 500]: a resample of 3 is all-200 with probability 1/27 > 2.5%)."""
    _synthetic_report(tmp_path)
    ax = figures[0].axes[0]
    band, lines = _band(ax)
    assert band.max() <= 500.0 and band.min() >= 200.0
    assert np.isclose(band.max(), 500.0) and np.isclose(band.min(), 200.0)
    assert np.allclose(lines, 400.0)  # the IQM of three seeds trims nothing: their mean
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("IQM" in t for t in labels) and any("bootstrap" in t for t in labels)


def test_the_learning_curve_is_clipped_to_a_known_return_range_only(figures, tmp_path):
    """A range from the env's table clips (CartPole-v1: 0..500 per its 500-step limit); without one
    (LunarLander's per-step reward is not tabulated) nothing is clipped."""
    from ppo.report import learning_curve, return_bounds

    assert return_bounds("CartPole-v1", 500) == (0.0, 500.0)
    assert return_bounds("Acrobot-v1", 500) == (-500.0, 0.0)
    assert return_bounds("LunarLander-v3", 1000) is None
    assert return_bounds("no-such-env", 100) is None
    history = _history([700.0, 650.0, 600.0])  # impossible on CartPole: shows whether clipping happens
    learning_curve(history, None, tmp_path / "a.png", "CartPole-v1", return_range=(0.0, 500.0))
    learning_curve(history, None, tmp_path / "b.png", "", return_range=None)
    clipped, unclipped = (np.concatenate(_band(fig.axes[0])) for fig in figures)
    assert clipped.max() <= 500.0
    assert unclipped.max() >= 650.0


def test_the_eval_histogram_shows_a_bar_when_every_episode_returns_the_same(figures, tmp_path):
    """Every episode 500.0 and the gate's line at 475: 29 bins of width 2/29 made a hairline bar."""
    from ppo.report import eval_returns_plot

    eval_returns_plot(np.full(8, 500.0), None, tmp_path / "e.png", min_return=475.0)
    fig = figures[0]
    ax = fig.axes[0]
    bars = [p for p in ax.patches if p.get_height() > 0]
    assert len(bars) == 1 and bars[0].get_height() == 8
    x0, x1 = bars[0].get_x(), bars[0].get_x() + bars[0].get_width()
    assert x0 < 500.0 < x1
    left, right = ax.get_xlim()
    assert (x1 - x0) / (right - left) >= 0.02, "the bar must be visible, not a hairline"
    title = ax.get_title() + " " + " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert "all 8 episodes" in title and "500" in title


def test_images_have_human_captions(tmp_path):
    """The file names (learning_curve.png) were the captions in report.md and report.html."""
    files = _synthetic_report(tmp_path)
    md = open(files["report_md"]).read()
    page = open(files["report_html"]).read()
    for key in ("learning_curve", "losses", "eval_returns"):
        assert f"![{key}]" not in md
        assert f"<figcaption>{key}</figcaption>" not in page and f'alt="{key}"' not in page
    assert "![Learning curve" in md and "![Greedy evaluation returns" in md
    assert "<figcaption>Learning curve" in page and "<figcaption>Greedy evaluation returns" in page


@pytest.mark.parametrize(
    "registry, says",
    [
        (
            {
                "model_name": "ppo-cartpole",
                "version": "3",
                "promoted": True,
                "champion": "3",
                "outcome": "promoted",
            },
            ["ppo-cartpole version 3 registered", "promoted: champion is now version 3"],
        ),
        (
            {
                "model_name": "ppo-cartpole",
                "version": "4",
                "promoted": False,
                "champion": "2",
                "outcome": "gated_out",
            },
            ["ppo-cartpole version 4 registered", "gated out", "champion stays at version 2"],
        ),
        (
            {
                "model_name": "ppo-cartpole",
                "version": None,
                "promoted": False,
                "champion": None,
                "outcome": "gated_out",
            },
            ["ppo-cartpole: not registered", "no champion yet"],
        ),
        (
            {
                "model_name": "ppo-cartpole",
                "version": "2",
                "promoted": False,
                "champion": "2",
                "outcome": "already_champion",
            },
            ["already the champion"],
        ),
        (None, ["registry step had not run"]),
    ],
)
def test_the_report_says_what_the_registry_did(tmp_path, registry, says):
    files = _synthetic_report(tmp_path, registry=registry)
    md = open(files["report_md"]).read()
    page = open(files["report_html"]).read()
    head = md.split("## Summary")[0]
    assert "## Registry" in head
    assert "<h2>Registry</h2>" in page.split("<h2>Summary</h2>")[0]
    section = page.split("<h2>Registry</h2>")[1].split("<h2>Summary</h2>")[0]
    for phrase in says:
        assert phrase in head and phrase in section
    assert "None" not in head and "None" not in section


def test_prefect_markdown_inlines_the_images(tmp_path):
    """The Prefect UI cannot load report.md's relative image paths: its summary inlines them."""
    import re

    from ppo.report import prefect_markdown

    _synthetic_report(tmp_path)
    md = prefect_markdown(tmp_path)
    refs = re.findall(r"!\[[^\]]*\]\(([^)]*)\)", md)
    assert len(refs) == 4  # curve, losses, eval returns, performance profile
    assert all(r.startswith("data:image/png;base64,") for r in refs)
    assert "## Config" not in md and "## Summary" in md
    small = prefect_markdown(tmp_path, max_image_bytes=100)
    assert re.findall(r"!\[[^\]]*\]\(([^)]*)\)", small) == []
    assert small.count("left out") == 4 and "learning_curve.png" in small


def test_the_report_has_a_performance_profile_and_the_probability_of_improvement(tmp_path):
    from pathlib import Path

    from ppo import PPOAgent
    from ppo.report import write_report
    from ppo.stats import gate_decision
    from tests.helpers import small_config

    rng = np.random.default_rng(1)
    champion = rng.normal(100, 10, 20)
    candidate = np.stack([champion + 5, champion - 1])
    gate = gate_decision(candidate, 0, champion, min_return=50.0, margin=10.0, min_seeds=2)
    files = write_report(
        tmp_path,
        config=small_config(),
        result={"history": [], "converged": True},
        gate=gate,
        candidate_returns=candidate,
        champion_returns=champion,
        agent=PPOAgent(4, 2),
        run_id="run-1",
    )
    assert Path(files["performance_profile"]).stat().st_size > 5_000
    md = Path(files["report_md"]).read_text()
    assert "Performance profile" in md
    assert "P(deployed beats champion on a start state) | 1" in md  # +5 on every start state


def test_the_performance_profiles_band_is_the_pooled_bootstrap_of_the_seeds():
    # the band is computed from the seeds' own profiles; it must be what resampling the seeds and pooling
    # their episodes gives (the plain, slow way), at every tau
    from ppo.report import profile_band

    returns = np.random.default_rng(3).normal(200, 80, size=(5, 40))
    taus = np.linspace(-50, 450, 41)
    low, high = profile_band(returns, taus, n_boot=300, seed=7)
    idx = np.random.default_rng(7).integers(0, 5, size=(300, 5))
    pooled = (returns[idx].reshape(300, -1)[..., None] > taus).mean(axis=1)  # [n_boot, taus]
    np.testing.assert_allclose(low, np.quantile(pooled, 0.025, axis=0), atol=1e-12)
    np.testing.assert_allclose(high, np.quantile(pooled, 0.975, axis=0), atol=1e-12)
    assert (low <= high).all() and low[0] > 0.9 and high[-1] < 0.1
