"""Shipped hardware profiles: loadable, complete, and every number sourced."""

import pytest

from agentgraph.api.hardware import HardwareProfile
from builders import shipped_profiles

PREFIXES = ("paper:", "vendor:", "derived:", "estimate:")
# The paper's own table (DESIGN.md): price $, memory GB, bandwidth GB/s, $/hour.
PAPER = {
    "a40": (3000, 48, 696, 0.15),
    "a100": (8000, 80, 2039, 0.25),
    "gaudi3": (12500, 128, 3700, 0.49),
    "mi300x": (20000, 192, 5300, 0.52),
    "h100": (25000, 80, 3350, 0.60),
    "b200": (40000, 192, 8000, 0.83),
}


def numeric_fields(data: object, prefix: str = "") -> list[str]:
    out = []
    if isinstance(data, dict):
        for k, v in data.items():
            if k in ("sources", "efficiency", "pool") and not prefix:
                if k == "pool":
                    out += [f"pool.{f}" for f, x in v.items() if isinstance(x, int | float)
                            and f != "nodes"]
                continue
            out += numeric_fields(v, f"{prefix}{k}.")
    elif isinstance(data, int | float) and not isinstance(data, bool):
        out.append(prefix.rstrip("."))
    return out


@pytest.fixture(scope="module")
def profiles() -> list[HardwareProfile]:
    return shipped_profiles()


def test_the_required_devices_are_shipped(profiles: list[HardwareProfile]) -> None:
    names = {p.name for p in profiles}
    assert set(PAPER) | {"h200", "l40s", "l4"} <= names
    cpus = [p for p in profiles if p.spec.device_type == "cpu"]
    assert {p.spec.vendor for p in cpus} == {"Intel", "AMD"}


def test_every_number_has_a_source(profiles: list[HardwareProfile]) -> None:
    for p in profiles:
        spec = p.spec.model_dump(by_alias=True, exclude_unset=True)
        for path in numeric_fields(spec):
            assert path in p.spec.sources, f"{p.name}: {path} has no source"
            assert p.spec.sources[path].startswith(PREFIXES), f"{p.name}: {path}"


def test_paper_devices_carry_the_papers_figures(profiles: list[HardwareProfile]) -> None:
    by_name = {p.name: p for p in profiles}
    for name, (price, memory, bandwidth, hourly) in PAPER.items():
        s = by_name[name].spec
        assert (s.cost.purchase_usd, s.memory_gb, s.memory_bandwidth_gbps, s.cost.hourly_usd) == (
            price, memory, bandwidth, hourly)
        assert s.sources["memoryGB"].startswith("paper:")


def test_one_cost_method_everywhere(profiles: list[HardwareProfile]) -> None:
    assert {p.spec.cost.basis for p in profiles} == {"owned"}
    for p in profiles:
        assert p.spec.hourly_cost() > 0
