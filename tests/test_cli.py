"""The CLI on inputs a user will type: every bad one exits 2 naming the field, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentgraph import cli
from builders import EXAMPLES_DIR, PROFILES_DIR

VOICE = (EXAMPLES_DIR / "voice-agent.yaml").read_text()


def _variant(tmp_path: Path, old: str, new: str) -> str:
    assert VOICE.count(old) == 1, old
    path = tmp_path / "g.yaml"
    path.write_text(VOICE.replace(old, new))
    return str(path)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own usage errors
        code = int(e.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


# (the change to examples/voice-agent.yaml, extra arguments, what stderr must say)
BAD = {
    "infinity": ("latencySeconds: 4.0 ", "latencySeconds: .inf ", [],
                 "AgentGraph/voice-agent: spec.sla.latencySeconds: Input should be a finite "
                 "number"),
    "nan": ("latencySeconds: 0.35", "latencySeconds: .nan", [],
            "spec.steps[4].tool.latencySeconds: Input should be a finite number"),
    "1e308 seconds": ("latencySeconds: 4.0 ", "latencySeconds: 1e308 ", [],
                      "spec.sla.latencySeconds: Input should be less than or equal to"),
    "denormal": ("latencySeconds: 4.0 ", "latencySeconds: 5e-324 ", [],
                 "spec.sla.latencySeconds: Input should be greater than or equal to"),
    "1e308 for an integer": ("layers: 80", "layers: 1e308", [],
                             "spec.steps[3].llm.model.layers: 1e+308 is far too large for "
                             "this whole-number field"),
    "huge integer": ("vectors: 5000000", "vectors: 5000000000000000", [],
                     "spec.steps[2].vectorSearch.vectors: Input should be less than or "
                     "equal to"),
    "1e12 requests/s": ("targetRequestsPerSecond: 5", "targetRequestsPerSecond: 1e12", [],
                        "spec.sla.targetRequestsPerSecond: Input should be less than or "
                        "equal to"),
    "memory spelt twice": ("cpuCores: 0.25,", "cpuCores: 0.25, memoryGb: 1, memoryGB: 1,", [],
                           "spec.steps[4].tool.memoryGb: Extra inputs are not permitted"),
    "hourly basis without prices": ("", "", ["--cost-basis", "hourly"],
                                    "HardwareProfile/epyc-9654: spec.cost.hourlyUSD: missing"),
    "negative time limit": ("", "", ["--time-limit", "-1"],
                            "argument --time-limit: -1: give seconds above 0"),
    "infinite time limit": ("", "", ["--time-limit", "inf"], "argument --time-limit: inf"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exits_2_naming_the_field(case: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    old, new, extra, expected = BAD[case]
    path = _variant(tmp_path, old, new) if old else str(EXAMPLES_DIR / "voice-agent.yaml")
    code, out, err = _run(["plan", path, "--profiles", str(PROFILES_DIR), *extra], capsys)
    assert code == cli.EXIT_INVALID, (out, err)
    assert expected in err, err
    assert "Traceback" not in err and out == ""


def test_hourly_basis_names_every_profile_without_a_price(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["plan", str(EXAMPLES_DIR / "voice-agent.yaml"), "--profiles",
                         str(PROFILES_DIR), "--cost-basis", "hourly"], capsys)
    assert code == cli.EXIT_INVALID
    missing = sorted(line.split("HardwareProfile/")[1].split(":")[0]
                     for line in err.splitlines())
    unpriced = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml")
                      if "hourlyUSD" not in p.read_text())
    assert missing == unpriced and missing


def test_exponents_without_a_dot_are_numbers(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    # YAML 1.2 and kubectl read 5e6 as a number; PyYAML alone would make it a string.
    plain = _run(["plan", str(EXAMPLES_DIR / "voice-agent.yaml"), "-o", "json"], capsys)
    exp = _run(["plan", _variant(tmp_path, "vectors: 5000000", "vectors: 5e6"), "-o", "json"],
               capsys)
    assert plain[0] == exp[0] == 0
    assert '"costPerHour"' in exp[1]
    assert plain[1].split('"solveSeconds"')[0] == exp[1].split('"solveSeconds"')[0]


def test_old_memory_spelling_is_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old = _run(["plan", _variant(tmp_path, "cpuCores: 0.25,", "cpuCores: 0.25, memoryGb: 3,"),
                "-o", "yaml"], capsys)
    new = _run(["plan", _variant(tmp_path, "cpuCores: 0.25,", "cpuCores: 0.25, memoryGB: 3,"),
                "-o", "yaml"], capsys)
    assert old[0] == new[0] == 0
    assert old[1].split("solveSeconds")[0] == new[1].split("solveSeconds")[0]


def test_rate_past_any_cluster_is_refused_one_line_per_pool(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _variant(tmp_path, "targetRequestsPerSecond: 5", "targetRequestsPerSecond: 1e8")
    code, _, err = _run(["plan", path, "-o", "json"], capsys)
    assert code == cli.EXIT_INFEASIBLE
    lines = [line.split("fits no pool: ")[1] for line in err.splitlines()
             if "(web-search)" in line]
    assert sorted(line.split(":")[0] for line in lines) == sorted(
        p.stem for p in PROFILES_DIR.glob("*.yaml"))
    for line in lines:  # one visit per request (the loop's second pass leaves at its head)
        assert line.endswith(": needs 1,562,500 replicas at 1e+08 requests/s, more than a "
                             "Kubernetes cluster holds (150,000 pods)"), line


def test_validate_checks_pool_names_against_given_profiles(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _variant(tmp_path, "kind: tool\n", "kind: tool\n      constraints: "
                    "{allowedPools: [h100, tpu-v5]}\n")
    code, _, _ = _run(["validate", path], capsys)
    assert code == 0  # without profiles a pool name cannot be checked
    code, _, err = _run(["validate", path, "--profiles", str(PROFILES_DIR)], capsys)
    assert code == cli.EXIT_INVALID
    assert err.startswith(f"{path}: spec.steps[4].constraints.allowedPools[1]: unknown pool "
                          "'tpu-v5'")
    code, _, err = _run(["plan", path], capsys)
    assert code == cli.EXIT_INVALID and "unknown pool 'tpu-v5'" in err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["--version"], capsys)
    assert code == 0
    assert out.startswith("agentgraph ") and out.strip() != "agentgraph"
