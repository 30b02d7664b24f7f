"""The pipeline's last task: one summary of what happened and where to look next.

The same summary is the flow run's result (what ``ppo pipeline`` prints, and what a deployment run's
``--watch`` user or the Prefect UI's result tab shows) and a markdown artifact keyed per registered model
(``ppo-summary-<model>``), so the Artifacts page shows each model's latest outcome without opening logs.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from tasks._cache import RESULTS
from tasks.promotion import outcome


def artifact_key(kind: str, model_name: str) -> str:
    """A Prefect artifact key for one registered model: ``ppo-<kind>-<model>``. Prefect keys allow only
    lowercase letters, digits and dashes; model names are validated names (letters, digits, '.', '_',
    '-'), so the rest becomes a dash."""
    slug = "".join(c if c.isalnum() else "-" for c in model_name.lower()).strip("-")
    return f"ppo-{kind}-{slug}"


def headline(result: str, model_name: str, version: str | None, champion: str | None) -> str:
    """One sentence a person reads first: what became of this run's model."""
    if result == "promoted":
        return f"promoted: {model_name} version {version} is now the champion"
    current = f"version {champion}" if champion else "no champion yet"
    if result == "already_champion":
        return f"already the champion: {model_name} version {champion} is this run's model"
    if result == "older_than_champion":
        return f"not gated: this run is older than the champion ({model_name} {current})"
    if result == "lost_race":
        return f"lost a promotion race: {model_name} is now at {current}; run promote again"
    return f"gated out: {model_name} stays at {current}" + (
        f" (this run is registered as version {version})" if version else ""
    )


def gate_line(decision: dict[str, Any]) -> str:
    """The gate's verdict with its figures, or why there was no gate."""
    if decision.get("status") not in ("passed", "failed"):
        return decision.get("reason", "no gate")
    verdict = "passed" if decision["passed"] else f"failed ({decision['reason']})"
    return (
        f"{verdict}: deployed IQM {decision['iqm']:.1f}, 95% CI [{decision['ci_low']:.1f}, "
        f"{decision['ci_high']:.1f}] on held-out episodes"
    )


@task(name="summary", retries=2, **RESULTS)
def summarize(
    config: dict[str, Any],
    model_name: str,
    trained: dict[str, Any],
    decision: dict[str, Any],
    version: str | None,
    promotion: dict[str, Any],
    files: dict[str, str],
) -> dict[str, Any]:
    """The flow's result: outcome, gate figures, version, champion and deep links (MLflow run, model
    version, report, this flow run); also written as the ``ppo-summary-<model>`` artifact."""
    from prefect.runtime import flow_run
    from prefect.utilities.urls import url_for

    from ppo import tracking

    result = outcome(decision, promotion)
    report_error = files.get("error")
    try:
        run_link = tracking.run_url(trained["run_id"])
    except Exception as e:  # the links are a convenience: the outcome stands without them
        get_run_logger().warning("no MLflow link for run %s: %s", trained["run_id"], e)
        run_link = None
    links = {
        "mlflow_run": run_link,
        "model_version": tracking.version_url(model_name, version) if version else None,
        "report": files.get("report_html"),
        "report_in_mlflow": f"{run_link}/artifacts/report/report.html"
        if run_link and not report_error
        else None,
        # url_for: the UI's route (prefect.runtime's ui_url names an older one, /flow-runs/flow-run/...)
        "flow_run": url_for("flow-run", obj_id=flow_run.id) if flow_run.id else None,
    }
    summary = {
        "outcome": result,
        "headline": headline(result, model_name, version, promotion["champion"]),
        "run_id": trained["run_id"],
        "model_name": model_name,
        "model_version": version,
        "seeds": config["train"]["seeds"],
        "gate_passed": decision["passed"] if decision["status"] in ("passed", "failed") else None,
        "gate_reason": decision["reason"],
        "gate": gate_line(decision),
        "iqm": decision["iqm"],
        "ci": [decision["ci_low"], decision["ci_high"]],
        "champion": promotion["champion"],
        "promoted": promotion["promoted"],
        "converged": trained["converged"],
        "env_steps": trained["env_steps"],
        "report": files.get("report_html"),
        "report_error": report_error,
        "links": links,
    }
    rows = [
        ("gate", summary["gate"]),
        ("model version", f"[{model_name} version {version}]({links['model_version']})" if version else "-"),
        ("champion", f"version {promotion['champion']}" if promotion["champion"] else "none yet"),
        ("MLflow run", f"[{trained['run_id']}]({run_link})" if run_link else trained["run_id"]),
        (
            "report",
            f"not written: {report_error}"
            if report_error
            else f"[report.html in MLflow]({links['report_in_mlflow']}), local `{files['report_html']}`",
        ),
        ("seeds", ", ".join(str(s) for s in summary["seeds"])),
        ("env steps", f"{trained['env_steps']:,}"),
    ]
    create_markdown_artifact(
        f"## {summary['headline']}\n\n| | |\n|---|---|\n"
        + "\n".join(f"| {k} | {v} |" for k, v in rows)
        + "\n\nThe MLflow links open while `make serve` or `ppo ui` runs.\n",
        key=artifact_key("summary", model_name),
        description=summary["headline"],
    )
    # the same, in the flow run's logs: what `prefect deployment run ... --watch` streams
    lines = [
        summary["headline"],
        f"gate: {summary['gate']}",
        f"MLflow run: {run_link or trained['run_id']}",
        f"model version: {links['model_version'] or 'not registered'}",
        f"report: not written ({report_error})"
        if report_error
        else f"report: {links['report_in_mlflow']} (local {files['report_html']})",
    ]
    get_run_logger().info("%s", "\n".join(lines))
    return summary


@task(name="summary", retries=2, **RESULTS)
def summarize_promotion(
    model_name: str, version: str, run_id: str, decision: dict[str, Any], promotion: dict[str, Any]
) -> dict[str, Any]:
    """The ``promote-model`` flow's summary: what became of ``version``, the gate's figures and links;
    as its log and the model's ``ppo-summary-<model>`` artifact (the same key ``train-ppo`` writes: the
    model's latest outcome, whichever flow decided it)."""
    from ppo import tracking

    result = outcome(decision, promotion)
    summary = {
        "outcome": result,
        "headline": headline(result, model_name, version, promotion["champion"]),
        "gate": gate_line(decision),
        "links": {"model_version": tracking.version_url(model_name, version)},
    }
    try:
        summary["links"]["mlflow_run"] = tracking.run_url(run_id)
    except Exception:  # a convenience: the outcome stands without it
        summary["links"]["mlflow_run"] = None
    create_markdown_artifact(
        f"## {summary['headline']}\n\n| | |\n|---|---|\n| gate | {summary['gate']} |\n"
        f"| model version | [{model_name} version {version}]({summary['links']['model_version']}) |\n"
        f"| champion | {'version ' + promotion['champion'] if promotion['champion'] else 'none yet'} |\n",
        key=artifact_key("summary", model_name),
        description=summary["headline"],
    )
    get_run_logger().info("%s\ngate: %s", summary["headline"], summary["gate"])
    return summary
