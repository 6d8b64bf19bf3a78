"""Plan -> Kubernetes objects. Pure: the same graph, plan, profiles and settings give the same
manifests, in the order they are applied.

Per graph: the runtime ConfigMap (the graph as the gateway executes it), the gateway's
ServiceAccount, Role and RoleBinding (read its pods and that ConfigMap, nothing else), one
Deployment per step (per phase for LLM steps; and a Service each with
``spec.runtime.stepServices``), and the gateway's Deployment and Service. A step pod pins its
pool by node labels, tolerates its taints, requests its devices and runs a reference worker
(``agentgraph worker``) unless the step names its own container. The selector names the
graph, step and phase but not the pool, so a step that moves pools is rolled over in place
rather than deleted first. Children carry only our labels: never the parent's
``app.kubernetes.io/instance`` or ``argocd.argoproj.io/*`` (Argo CD would adopt and prune them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agentgraph import __version__
from agentgraph.api import API_VERSION, GROUP
from agentgraph.api.container import EnvFrom, EnvSource, KeyRef, ObjectRef
from agentgraph.api.graph import AgentGraph, Step
from agentgraph.api.hardware import DeviceType, HardwareProfile
from agentgraph.api.naming import (
    LABEL_COMPONENT,
    LABEL_GRAPH,
    LABEL_POOL,
    MANAGED_BY,
    gateway_name,
    object_name,
    runtime_config_name,
    selector,
)
from agentgraph.api.plan import Assignment, Plan
from agentgraph.api.runtime import (
    CONFIG_KEY,
    CORPUS_ENV,
    GATEWAY_PORT,
    METRICS_PORT,
    WORKER_CONFIG_ENV,
)
from agentgraph.costs.base import CostSettings, Pool
from agentgraph.planner import graph as graph_model
from agentgraph.planner import runtime_config

Manifest = dict[str, Any]
RUNTIME_IMAGE = f"ghcr.io/agentgraph/agentgraph-runtime:{__version__}"
SLOWDOWN_ANNOTATION = f"{GROUP}/emulator-slowdown"  # on a HardwareProfile: tests, demos
GATEWAY_RPS_PER_REPLICA = 500.0  # one gateway core does over 1,000/s (make bench): headroom
GATEWAY_RESOURCES = {"requests": {"cpu": "500m", "memory": "256Mi"},
                     "limits": {"cpu": "1", "memory": "512Mi"}}
WORKER_MEMORY_GIB = 0.5  # a reference worker's process, before any model it holds itself
# The restricted Pod Security Standard for every pod the operator creates, so a namespace that
# enforces it runs graphs unchanged. The runtime image runs as 65532; a step's own image must
# run as a non-root user too.
POD_SECURITY = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
PROMETHEUS = {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
              "prometheus.io/path": "/metrics"}
# Re-exported for the controller's other modules (names live in api/naming).
__all__ = ["LABEL_GRAPH", "LABEL_POOL", "MANAGED_BY", "object_name", "render", "selector"]


@dataclass(frozen=True)
class RuntimeSettings:
    """What the operator's settings say about the pods it creates."""

    image: str = RUNTIME_IMAGE
    image_pull_policy: str = "IfNotPresent"


def _step_spec(graph: AgentGraph, flat_name: str) -> Step:
    """The spec of a (possibly sub-agent) step by its flattened name 'agent.step'."""
    steps: Sequence[Step] = graph.spec.steps
    parts = flat_name.split(".")
    for i, part in enumerate(parts):
        step = next(s for s in steps if s.name == part)
        if i == len(parts) - 1:
            return step
        assert step.agent is not None
        steps = step.agent.steps
    raise KeyError(flat_name)


def _quantity_cpu(cores: float) -> str:
    millis = max(1, math.ceil(cores * 1000))
    return f"{millis // 1000}" if millis % 1000 == 0 else f"{millis}m"


def _quantity_memory(gib: float) -> str:
    """In the API server's canonical form ('0.5' -> '512Mi', '2' -> '2Gi'), so what is applied
    reads back unchanged and an unchanged child is never rewritten."""
    mib = max(1, math.ceil(gib * 1024))
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


def memory_gib(step: Step) -> float:
    """What a step's pod holds in host memory. Tools and CPU work say so (``memoryGB``); the
    reference workers otherwise need a base (an LLM or speech worker emulates the model, or
    forwards to its server: the weights live on the accelerator or in that server, and a
    prefill worker keeps only small stand-ins for KV handles); an embedding worker also holds
    its model on the CPU."""
    for block in (step.tool, step.compute):
        if block is not None:
            return block.memory_gb
    if step.embedding is not None:
        return WORKER_MEMORY_GIB + step.embedding.parameters_billions * \
            step.embedding.dtype_bytes
    return WORKER_MEMORY_GIB


def _resources(a: Assignment, profile: HardwareProfile, step: Step) -> dict[str, Any]:
    """Requests equal to limits (the Guaranteed QoS class): the plan sized the replica."""
    spec = profile.spec
    memory = _quantity_memory(memory_gib(step))
    if spec.device_type is DeviceType.CPU:
        held = {"cpu": _quantity_cpu(a.units_per_replica), "memory": memory}
        return {"requests": held, "limits": dict(held)}
    devices = a.units_per_replica
    host_cpu = _quantity_cpu(devices * spec.cores)  # the host cores that come with the devices
    held = {"cpu": host_cpu, "memory": memory}
    if devices >= 1:  # below 1: host-CPU work on an accelerator node, no device
        held[spec.resource_name] = str(math.ceil(devices))
    return {"requests": held, "limits": dict(held)}


def owner_reference(graph: AgentGraph, uid: str) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "AgentGraph", "name": graph.metadata.name,
            "uid": uid, "controller": True, "blockOwnerDeletion": True}


def _probes(port: str | int) -> dict[str, Any]:
    return {
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": port}, "periodSeconds": 2,
                           "failureThreshold": 2, "timeoutSeconds": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 10,
                          "failureThreshold": 3, "timeoutSeconds": 5},
    }


def _tolerations(profile: HardwareProfile) -> list[dict[str, Any]]:
    return [{"key": t.key, "operator": "Equal" if t.value is not None else "Exists",
             **({"value": t.value} if t.value is not None else {}), "effect": t.effect}
            for t in profile.spec.pool.taints]


def _slowdown(profile: HardwareProfile) -> float:
    raw = profile.metadata.annotations.get(SLOWDOWN_ANNOTATION)
    try:
        value = float(raw) if raw is not None else 1.0
    except ValueError:
        return 1.0
    return value if math.isfinite(value) and value > 0 else 1.0


def _ref(ref: KeyRef | ObjectRef) -> dict[str, Any]:
    """As the API server stores it: ``optional`` only when set."""
    return ref.model_dump(by_alias=True, exclude_defaults=True)


def _source(source: EnvSource) -> dict[str, Any]:
    if source.secret_key_ref is not None:
        return {"secretKeyRef": _ref(source.secret_key_ref)}
    assert source.config_map_key_ref is not None
    return {"configMapKeyRef": _ref(source.config_map_key_ref)}


def _env_from(e: EnvFrom) -> dict[str, Any]:
    if e.secret_ref is not None:
        out: dict[str, Any] = {"secretRef": _ref(e.secret_ref)}
    else:
        assert e.config_map_ref is not None
        out = {"configMapRef": _ref(e.config_map_ref)}
    if e.prefix:
        out["prefix"] = e.prefix
    return out


def _pod_env(graph: str) -> list[dict[str, Any]]:
    return [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "POD_NAMESPACE",
             "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "AGENTGRAPH_GRAPH", "value": graph}]


def _step_objects(graph: AgentGraph, plan: Plan, a: Assignment, profile: HardwareProfile,
                  profiles: Mapping[str, HardwareProfile], namespace: str, meta_of: Any,
                  model: graph_model.GraphModel, runtime: RuntimeSettings) -> list[Manifest]:
    name = graph.metadata.name
    step = _step_spec(graph, a.step)
    container = step.container
    port = runtime_config.step_port(step)
    match = selector(name, a.step, a.phase)
    labels = {**MANAGED_BY, **match}
    pod_labels = {**labels, LABEL_POOL: a.pool, LABEL_COMPONENT: "worker"}
    config = runtime_config.worker_config(graph, plan, a, profiles, namespace, model,
                                          _slowdown(profile))
    env: list[dict[str, Any]] = [
        {"name": k, "value": v} for k, v in sorted((container.env if container else {}).items())]
    env += [{"name": k, "valueFrom": _source(v)}
            for k, v in sorted((container.value_from if container else {}).items())]
    env += [
        *_pod_env(name),
        {"name": "AGENTGRAPH_STEP", "value": a.step},
        {"name": "AGENTGRAPH_PHASE", "value": a.phase or "run"},
        {"name": "AGENTGRAPH_TENSOR_PARALLEL", "value": str(a.tensor_parallel)},
        {"name": "AGENTGRAPH_BATCH", "value": str(a.batch)},
        {"name": WORKER_CONFIG_ENV,
         "value": config.model_dump_json(by_alias=True, exclude_none=True)}]
    if step.vector_search is not None and step.vector_search.corpus is not None:
        ref = step.vector_search.corpus
        env.append({"name": CORPUS_ENV, "valueFrom": {"configMapKeyRef": {
            "name": ref.name, "key": ref.key}}})
    if container is not None and container.image is not None:
        main: dict[str, Any] = {"name": "step", "image": container.image,
                                "args": list(container.args)}
        ports = [{"name": "http", "containerPort": port}]
        metrics_port = port
    else:
        main = {"name": "step", "image": runtime.image,
                "imagePullPolicy": runtime.image_pull_policy, "command": ["agentgraph"],
                "args": ["worker", "--kind", step.kind.value, "--phase", a.phase or "run"]}
        ports = [{"name": "http", "containerPort": port},
                 {"name": "metrics", "containerPort": METRICS_PORT}]
        metrics_port = METRICS_PORT
    main.update(env=env, ports=ports, resources=_resources(a, profile, step),
                securityContext=CONTAINER_SECURITY, **_probes("http"))
    if container is not None and container.env_from:
        main["envFrom"] = [_env_from(e) for e in container.env_from]
    pull = [{"name": n} for n in (container.image_pull_secrets if container else [])]
    obj = object_name(name, a.step, a.phase)
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta_of(obj, labels),
         "spec": {
             "replicas": a.replicas,
             "selector": {"matchLabels": match},
             "strategy": {"type": "RollingUpdate",
                          "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
             "template": {
                 "metadata": {"labels": pod_labels,
                              "annotations": {**PROMETHEUS,
                                              "prometheus.io/port": str(metrics_port)}},
                 "spec": {
                     "automountServiceAccountToken": False,
                     "enableServiceLinks": False,
                     "securityContext": POD_SECURITY,
                     **({"imagePullSecrets": pull} if pull else {}),
                     "nodeSelector": dict(profile.spec.pool.node_selector),
                     "tolerations": _tolerations(profile),
                     "containers": [main],
                 },
             },
         }},
    ] + ([{"apiVersion": "v1", "kind": "Service", "metadata": meta_of(obj, labels),
           "spec": {"selector": match,
                    "ports": [{"name": "http", "port": port, "targetPort": "http"}]}}]
         if graph.spec.runtime.step_services else [])


def gateway_pool(plan: Plan, profiles: Mapping[str, HardwareProfile]) -> HardwareProfile | None:
    """Where the gateway runs: the cheapest core among the CPU pools the plan uses, else among
    all CPU pools; None when there is no CPU pool (it then goes wherever it fits)."""
    cpu = [p for p in profiles.values() if p.spec.device_type is DeviceType.CPU]
    used = {a.pool for a in plan.assignments}
    choice = [p for p in cpu if p.name in used] or cpu
    if not choice:
        return None
    settings = CostSettings()
    return min(choice, key=lambda p: (Pool.from_profile(p, settings).unit_hour_usd, p.name))


def gateway_replicas(graph: AgentGraph) -> int:
    if graph.spec.runtime.gateway_replicas is not None:
        return graph.spec.runtime.gateway_replicas
    rate = graph.spec.sla.target_requests_per_second or 0.0
    return max(1, math.ceil(rate / GATEWAY_RPS_PER_REPLICA))


def _gateway_objects(graph: AgentGraph, plan: Plan, profiles: Mapping[str, HardwareProfile],
                     namespace: str, meta_of: Any, runtime: RuntimeSettings) -> list[Manifest]:
    name = graph.metadata.name
    gw = gateway_name(name)
    labels = {**MANAGED_BY, LABEL_GRAPH: name, LABEL_COMPONENT: "gateway"}
    pool = gateway_pool(plan, profiles)
    placement: dict[str, Any] = {}
    if pool is not None:
        placement = {"nodeSelector": dict(pool.spec.pool.node_selector),
                     "tolerations": _tolerations(pool)}
    container = {
        "name": "gateway", "image": runtime.image,
        "imagePullPolicy": runtime.image_pull_policy, "command": ["agentgraph"],
        "args": ["gateway", "--graph", name],
        "env": _pod_env(name),
        "ports": [{"name": "http", "containerPort": GATEWAY_PORT},
                  {"name": "metrics", "containerPort": METRICS_PORT}],
        "resources": GATEWAY_RESOURCES, "securityContext": CONTAINER_SECURITY,
        **_probes("http"),
    }
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta_of(gw, labels),
         "spec": {
             "replicas": gateway_replicas(graph),
             "selector": {"matchLabels": {LABEL_GRAPH: name, LABEL_COMPONENT: "gateway"}},
             "strategy": {"type": "RollingUpdate",
                          "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
             "template": {
                 "metadata": {"labels": labels, "annotations": {
                     **PROMETHEUS,
                     # its latency buckets sit around the SLA: a new SLA rolls the gateway
                     f"{GROUP}/sla-seconds": f"{graph.spec.sla.latency_seconds:g}"}},
                 "spec": {"serviceAccountName": gw, "automountServiceAccountToken": True,
                          "enableServiceLinks": False, "securityContext": POD_SECURITY,
                          **placement,
                          "containers": [container]},
             },
         }},
        {"apiVersion": "v1", "kind": "Service", "metadata": meta_of(gw, labels),
         "spec": {"selector": {LABEL_GRAPH: name, LABEL_COMPONENT: "gateway"},
                  "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}},
    ]


def _access_objects(graph: AgentGraph, namespace: str, meta_of: Any) -> list[Manifest]:
    """The gateway may read its graph's pods and its one ConfigMap, nothing else."""
    name = graph.metadata.name
    gw = gateway_name(name)
    labels = {**MANAGED_BY, LABEL_GRAPH: name, LABEL_COMPONENT: "gateway"}
    rbac = "rbac.authorization.k8s.io"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta_of(gw, labels),
         "automountServiceAccountToken": False},  # only the gateway's pods mount its token
        {"apiVersion": f"{rbac}/v1", "kind": "Role", "metadata": meta_of(gw, labels),
         "rules": [
             {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
             {"apiGroups": [""], "resources": ["configmaps"],
              "resourceNames": [runtime_config_name(name)],
              "verbs": ["get", "list", "watch"]},
         ]},
        {"apiVersion": f"{rbac}/v1", "kind": "RoleBinding", "metadata": meta_of(gw, labels),
         "roleRef": {"apiGroup": rbac, "kind": "Role", "name": gw},
         "subjects": [{"kind": "ServiceAccount", "name": gw, "namespace": namespace}]},
    ]


def render(
    graph: AgentGraph,
    plan: Plan,
    profiles: Mapping[str, HardwareProfile],
    namespace: str,
    uid: str,
    runtime: RuntimeSettings | None = None,
) -> list[Manifest]:
    """Every child of a feasible plan, in the order to apply them."""
    if not plan.feasible:
        return []
    runtime = runtime or RuntimeSettings()
    name = graph.metadata.name
    model = graph_model.build(graph)

    def meta_of(obj: str, labels: Mapping[str, str]) -> dict[str, Any]:
        return {"name": obj, "namespace": namespace, "labels": dict(labels),
                "ownerReferences": [owner_reference(graph, uid)]}

    executed = runtime_config.runtime_graph(graph, plan, namespace, model)
    out: list[Manifest] = [
        {"apiVersion": "v1", "kind": "ConfigMap",
         "metadata": meta_of(runtime_config_name(name),
                             {**MANAGED_BY, LABEL_GRAPH: name, LABEL_COMPONENT: "gateway"}),
         "data": {CONFIG_KEY: executed.model_dump_json(by_alias=True, exclude_none=True)}},
        *_access_objects(graph, namespace, meta_of),
    ]
    for a in plan.assignments:
        if a.server not in (None, a.step):
            continue  # on another step's shared model server: that step renders it
        out.extend(_step_objects(graph, plan, a, profiles[a.pool], profiles, namespace, meta_of,
                                 model, runtime))
    out.extend(_gateway_objects(graph, plan, profiles, namespace, meta_of, runtime))
    return out
