"""Cost models: the formulas of DESIGN.md and the roofline's qualitative behaviour."""

import math

import pytest

from agentgraph.api.graph import ModelShape, Step
from agentgraph.api.hardware import CostBasis
from agentgraph.costs import llm as llm_cost
from agentgraph.costs import registry
from agentgraph.costs.base import CostSettings, Pool
from builders import LLAMA3_8B, LLAMA3_70B, compute, llm, make_pool, shipped_profiles, tool

SETTINGS = CostSettings()


def pool(name: str, **kw: object) -> Pool:
    return Pool.from_profile(make_pool(name, **kw), SETTINGS)  # type: ignore[arg-type]


def shipped(name: str) -> Pool:
    profile = next(p for p in shipped_profiles() if p.name == name)
    return Pool.from_profile(profile, SETTINGS)


def options(step: dict, phase: str, p: Pool):  # type: ignore[no-untyped-def, type-arg]
    s = Step.model_validate(step)
    return registry.model_for(s).estimate(s, phase, p, SETTINGS)  # type: ignore[arg-type]


def test_kv_cache_formula_of_design_md() -> None:
    m = ModelShape.model_validate(LLAMA3_70B)
    # 2 * layers * d_model * kv/heads * tokens * batch * bytes
    expected = 2 * 80 * 8192 * (8 / 64) * 4096 * 3 * 2
    assert llm_cost.kv_cache_bytes(m, 4096, 3) == expected
    assert llm_cost.kv_bytes_per_token(m) == 2 * 80 * 8192 / 8 * 2  # 320 KiB per token


def test_decode_is_memory_bound_and_long_prefill_compute_bound() -> None:
    h100 = shipped("h100")
    step = llm("chat", input_tokens=4096, output_tokens=512)
    prefill = options(step, "prefill", h100).options
    decode = options(step, "decode", h100).options
    assert all(o.bound == "compute" for o in prefill)
    assert any(o.bound == "memory" for o in decode if o.batch == 1)


def test_decode_tbt_matches_the_roofline_by_hand() -> None:
    h100 = shipped("h100")
    [one] = [o for o in options(llm("chat", input_tokens=512, output_tokens=512), "decode",
                                h100).options if o.tensor_parallel == 1 and o.batch == 1]
    weights = 8.03e9 * 2
    kv = llm_cost.kv_cache_bytes(ModelShape.model_validate(LLAMA3_8B), 512 + 256, 1)
    assert one.tbt == pytest.approx((weights + kv) / (3350e9 * 0.8), rel=1e-9)
    assert one.latency == pytest.approx(512 * one.tbt, rel=1e-12)


def test_tensor_parallel_helps_then_communication_eats_the_gain() -> None:
    slow_link = pool("slowlink", memory=200, bandwidth=3000, tflops=1000)
    slow_link = Pool(**{**slow_link.__dict__, "scale_up_bandwidth": 100e9,
                        "scale_up_latency": 200e-6})
    step = llm("chat", input_tokens=4096)
    by_tp = {o.tensor_parallel: o.latency for o in options(step, "prefill", slow_link).options
             if o.batch == 1}
    assert by_tp[2] < by_tp[1]  # compute halves
    assert by_tp[8] > by_tp[4]  # the all-reduce over a slow link dominates


def test_memory_fit_rejects_and_says_why() -> None:
    small = pool("small", memory=24, max_tp=2)
    result = options(llm("chat", model=LLAMA3_70B), "decode", small)
    assert result.options == []
    assert "small: decode needs" in result.rejected[0] and "43.2 GB fit" in result.rejected[0]


def test_tp_only_dividing_heads_and_within_chassis() -> None:
    four = pool("four", max_tp=4)
    tps = {o.tensor_parallel for o in options(llm("chat"), "prefill", four).options}
    assert tps == {1, 2, 4}


def test_fp8_weights_use_fp8_tensor_cores_where_present() -> None:
    fp8_model = ModelShape.model_validate({**LLAMA3_8B, "dtypeBytes": 1})
    assert llm_cost.peak_flops(fp8_model, shipped("h100")) == pytest.approx(1978.9e12)
    assert llm_cost.peak_flops(fp8_model, shipped("a100")) == pytest.approx(312e12)


def test_kv_transfer_uses_the_slower_nic() -> None:
    step = Step.model_validate(llm("chat", input_tokens=1000))
    t = registry.model_for(step).kv_transfer(step, shipped("h100"), shipped("a100"), SETTINGS)
    assert t is not None
    size = llm_cost.kv_cache_bytes(ModelShape.model_validate(LLAMA3_8B), 1000, 1)
    assert t.bytes == size
    assert t.latency == pytest.approx(size / (200e9 / 8 * 0.8))


def test_owned_cost_basis_is_an_annuity_plus_power() -> None:
    h100 = next(p for p in shipped_profiles() if p.name == "h100")
    annuity = 25000 * 0.08 / (1 - 1.08 ** -4)
    assert h100.spec.hourly_cost(CostBasis.OWNED) == pytest.approx(annuity / 8760 + 0.7 * 0.40)
    assert h100.spec.hourly_cost(CostBasis.HOURLY) == pytest.approx(0.60)


def test_cpu_pools_count_cores_and_price_per_core() -> None:
    xeon = shipped("xeon-8480")
    assert xeon.units_per_device == 112
    assert xeon.unit_hour_usd == pytest.approx(xeon.device_hour_usd / 112)
    opts = options(compute("c", core_seconds=1.0, max_cores=4), "run", xeon).options
    assert [(o.units, o.latency) for o in opts] == [(1, 1.0), (2, 0.5), (4, 0.25)]


def test_tool_on_an_accelerator_pays_the_host_core_share() -> None:
    h100 = shipped("h100")
    [o] = options(tool("t", latency=0.5), "run", h100).options
    assert o.units == pytest.approx(0.25 / 14)
    assert o.throughput == pytest.approx(32 / 0.5)
    assert o.cost_per_request == pytest.approx(o.units * h100.unit_hour_usd / 3600 / 64)


def test_every_kind_has_a_cost_model() -> None:
    assert {"roofline-llm", "small-model", "vector-search", "tool", "compute", "table"} <= set(
        registry.names())


def test_small_model_batches_on_gpu_not_on_cpu() -> None:
    step = {"name": "e", "kind": "embedding",
            "embedding": {"parametersBillions": 0.3, "tokens": 64}}
    gpu_batches = {o.batch for o in options(step, "run", shipped("l4")).options}
    cpu_batches = {o.batch for o in options(step, "run", shipped("epyc-9654")).options}
    assert gpu_batches == set(SETTINGS.small_model_batches)
    assert cpu_batches == {1}
    assert math.isfinite(min(o.latency for o in options(step, "run", shipped("l4")).options))
