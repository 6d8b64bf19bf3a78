"""Builders for graphs and pools: tests say what differs, not the whole spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentgraph import cli
from agentgraph.api.graph import AgentGraph
from agentgraph.api.hardware import HardwareProfile

ROOT = Path(__file__).resolve().parent.parent
PROFILES_DIR = ROOT / "hardware_profiles"
EXAMPLES_DIR = ROOT / "examples"

LLAMA3_8B: dict[str, Any] = {"parametersBillions": 8.03, "layers": 32, "hiddenSize": 4096,
                             "heads": 32, "kvHeads": 8, "dtypeBytes": 2}
LLAMA3_70B: dict[str, Any] = {"parametersBillions": 70.6, "layers": 80, "hiddenSize": 8192,
                              "heads": 64, "kvHeads": 8, "dtypeBytes": 2}


def shipped_profiles() -> list[HardwareProfile]:
    return cli.load_profiles(str(PROFILES_DIR))


def make_pool(name: str, *, cpu: bool = False, price: float = 1.0, memory: float = 80,
              bandwidth: float = 2000, tflops: float = 500, nodes: int | None = None,
              max_tp: int = 8, cores: float = 16) -> HardwareProfile:
    spec: dict[str, Any] = {
        "vendor": "Test", "device": name, "deviceType": "cpu" if cpu else "accelerator",
        "memoryGB": memory, "memoryBandwidthGBps": bandwidth, "fp16TFLOPS": tflops,
        "scaleOutGbps": 400, "tdpWatts": 500, "cores": cores,
        "cost": {"basis": "hourly", "hourlyUSD": price},
        "resourceName": "none" if cpu else "nvidia.com/gpu",
        "pool": {"nodeSelector": {"pool": name}, "devicesPerNode": 1 if cpu else 8,
                 **({"nodes": nodes} if nodes is not None else {})},
    }
    if not cpu:
        spec["scaleUp"] = {"bandwidthGBps": 400, "maxDevices": max_tp}
    return HardwareProfile.model_validate(
        {"apiVersion": "agentgraph.dev/v1alpha1", "kind": "HardwareProfile",
         "metadata": {"name": name}, "spec": spec})


def tool(name: str, latency: float = 0.1, deps: list[str] | None = None,
         **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": "tool", "dependsOn": deps or [],
            "tool": {"latencySeconds": latency}, **extra}


def compute(name: str, core_seconds: float = 0.2, deps: list[str] | None = None,
            max_cores: int = 8) -> dict[str, Any]:
    return {"name": name, "kind": "compute", "dependsOn": deps or [],
            "compute": {"coreSeconds": core_seconds, "maxCores": max_cores}}


def llm(name: str, deps: list[str] | None = None, model: dict[str, Any] | None = None,
        input_tokens: int = 1024, output_tokens: int = 128, **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": "llm", "dependsOn": deps or [],
            "llm": {"model": model or LLAMA3_8B, "inputTokens": input_tokens,
                    "outputTokens": output_tokens, **extra}}


def make_graph(steps: list[dict[str, Any]], *, sla: float = 10.0, rate: float | None = None,
               loops: list[dict[str, Any]] | None = None, name: str = "g",
               runtime: dict[str, Any] | None = None, **sla_extra: Any) -> AgentGraph:
    sla_doc: dict[str, Any] = {"latencySeconds": sla, **sla_extra}
    if rate is not None:
        sla_doc["targetRequestsPerSecond"] = rate
    return AgentGraph.model_validate({
        "apiVersion": "agentgraph.dev/v1alpha1", "kind": "AgentGraph",
        "metadata": {"name": name},
        "spec": {"steps": steps, "loops": loops or [], "sla": sla_doc,
                 "runtime": runtime or {}},
    })
