"""The seed paper's worked example must come out exactly as the paper computes it."""

import json

import pytest

from agentgraph import cli
from builders import EXAMPLES_DIR

EXAMPLE = str(EXAMPLES_DIR / "paper-worked-example.yaml")


def run_json(capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    assert cli.main(["plan", EXAMPLE, "--output", "json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def test_prefill_on_hp_decode_on_co(capsys: pytest.CaptureFixture[str]) -> None:
    plan = run_json(capsys)
    assert plan["feasible"] is True
    assert plan["objective"]["name"] == "costPerRequest"
    assert plan["objective"]["value"] == pytest.approx(0.095, rel=1e-9)
    assert plan["latencySeconds"] == pytest.approx(0.120, rel=1e-9)
    pools = {a["phase"]: a["pool"] for a in plan["assignments"]}
    assert pools == {"prefill": "hp", "decode": "co"}
    for a in plan["assignments"]:
        assert {"step", "phase", "pool", "tensorParallel", "replicas", "latencySeconds"} <= set(a)
    [transfer] = plan["transfers"]
    assert (transfer["from"], transfer["to"]) == ("hp", "co")
    assert transfer["latencySeconds"] == pytest.approx(0.010)
    assert transfer["costPerRequest"] == pytest.approx(0.005)


def test_sla_is_the_binding_constraint(capsys: pytest.CaptureFixture[str]) -> None:
    plan = run_json(capsys)
    sla = next(c for c in plan["constraints"] if c["name"] == "sla.latencySeconds")
    assert sla["binding"] is True


def test_explain_lists_the_homogeneous_alternatives(capsys: pytest.CaptureFixture[str]) -> None:
    plan = run_json(capsys, "--explain")
    baselines = {b["pool"]: b for b in plan["baselines"]}
    assert baselines["hp"]["feasible"] is True
    assert baselines["hp"]["latencySeconds"] == pytest.approx(0.105)
    assert baselines["hp"]["objective"] == pytest.approx(0.11)
    assert baselines["co"]["feasible"] is False
    assert baselines["co"]["latencySeconds"] == pytest.approx(0.160)
    assert baselines["co"]["objective"] == pytest.approx(0.06)
    assert "sla.latencySeconds" in baselines["co"]["reason"]
    decode = next(a for a in plan["alternatives"] if a["phase"] == "decode")
    assert decode["pool"] == "hp"
    assert decode["delta"] == pytest.approx(0.015)  # decode on HP: +$0.04, no KV transfer: -$0.005
    prefill = next(a for a in plan["alternatives"] if a["phase"] == "prefill")
    assert prefill["feasible"] is False
    assert "co" in prefill["reason"] and "sla.latencySeconds" in prefill["reason"]


def test_table_output_is_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", EXAMPLE, "--explain"]) == 0
    out = capsys.readouterr().out
    assert "baselines: one accelerator type" in out and "hp only" in out
    assert "hp -> co" in out
