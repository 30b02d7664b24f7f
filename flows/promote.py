"""Flow ``promote-model``: re-run the gate for an existing model version; move ``champion`` only if it
passes."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks import evaluate_candidate, fetch_version, gate, outcome, promote, register, validate_config
from tasks.summary import summarize_promotion


@flow(name="promote-model", log_prints=True)
def promote_model(
    version: int, config_path: str | None = "configs/cartpole.yaml", overrides: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Gate model ``version`` (of the config's registered model) against the current champion.

    The version's own run supplies what was trained (its config and every seed's checkpoint); the config
    given here supplies the gate's settings.
    """
    validated = validate_config(config_path, overrides or {})
    model_name = validated["model_name"]
    fetched = fetch_version(model_name, str(version), validated["config"]["env"]["id"])
    config = {
        **fetched["config"],
        "gate": validated["config"]["gate"],
        "registry": validated["config"]["registry"],
    }
    evaluation = evaluate_candidate(config, fetched["checkpoint_dir"], fetched["run_id"])
    decision = gate(config, evaluation, fetched["run_id"])
    registered = register(model_name, fetched["run_id"], decision, str(version))
    promotion = promote(model_name, registered, decision)
    said = summarize_promotion(model_name, str(version), fetched["run_id"], decision, promotion)
    return {
        "headline": said["headline"],
        "gate": said["gate"],
        "links": said["links"],
        "outcome": outcome(decision, promotion),
        "model_name": model_name,
        "version": str(version),
        "gate_passed": decision["passed"] if decision["status"] in ("passed", "failed") else None,
        "gate_reason": decision["reason"],
        "champion": promotion["champion"],
        "promoted": promotion["promoted"],
        "lost_race": promotion["lost_race"],
    }


if __name__ == "__main__":
    import sys

    promote_model(int(sys.argv[1]))
