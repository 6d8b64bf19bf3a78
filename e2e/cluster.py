"""A real Kubernetes control plane on 127.0.0.1, no Docker: `python e2e/cluster.py up|down|status`.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubectl built from Go modules
pinned in e2e/tools/go.mod, and kwok (simulated nodes) and helm pinned below. Binaries are
cached in .cache/bin, so a second `up` only starts processes. Real TLS: a CA, a serving cert for
127.0.0.1, an admin client cert, a front-proxy CA and the service-account key pair are made with
openssl. Nodes come from hardware_profiles/: each pool gets kwok nodes carrying its labels, taints
and extended resources. Everything started is recorded by PID in .cache/cluster/pids and `down`
stops exactly those processes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache"
BIN = CACHE / "bin"
STATE = CACHE / "cluster"
PKI = STATE / "pki"
LOGS = STATE / "logs"
PIDS = STATE / "pids"
PODS = STATE / "pods"  # the pod runner's processes: their logs, tokens and PIDs
KUBECONFIG = STATE / "kubeconfig"

K8S_VERSION = "v1.34.4"  # must match e2e/tools/go.mod
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.22.0"  # Helm 3: what Argo CD renders charts with
# Prometheus 3.16.0: its Go module is versioned v0.3MM.P for 3.MM.P. Built from the module, as
# the control plane is: Debian's prometheus (2.42) is built without Kubernetes discovery.
PROMETHEUS_MODULE = "github.com/prometheus/prometheus"
PROMETHEUS_VERSION = "v0.316.0"
PROMETHEUS_RELEASE = "3.16.0"
PROMETHEUS_PORT = 9099
PROMETHEUS_URL = f"http://127.0.0.1:{PROMETHEUS_PORT}"
SCRAPE_INTERVAL_S = 5
APISERVER_PORT = 6443
ETCD_PORT = 2379
KWOK_LABEL = "agentgraph.dev/kwok"
POD_CIDR = "127.1.0.0/16"
COMPONENT = "agentgraph.dev/component"  # on the operator's pods: the pod runner runs them
NODE_LEASE_SECONDS = 40  # what a kubelet uses; kwok renews at a quarter of it
READY_TIMEOUT_S = 60.0
CONTROL_PLANE = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")

# Nodes per pool of the local cluster (DEVELOPERS: heterogeneous pools from hardware_profiles/).
NODES = {"b200": 2, "h100": 4, "a100": 4, "gaudi3": 2, "mi300x": 2, "h200": 1, "l40s": 1,
         "l4": 1, "a40": 1, "xeon-8480": 4, "epyc-9654": 4}


def log(msg: str) -> None:
    print(f"cluster: {msg}", flush=True)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, **kw)


# ---------------------------------------------------------------- binaries


def build() -> None:
    BIN.mkdir(parents=True, exist_ok=True)
    missing = [b for b in CONTROL_PLANE if not (BIN / b).exists()]
    if missing:
        log(f"building {', '.join(missing)} {K8S_VERSION} from Go modules (first time: minutes)")
        version = "k8s.io/component-base/version"
        ldflags = (f"-s -w -X {version}.gitVersion={K8S_VERSION} -X {version}.gitMajor=1 "
                   f"-X {version}.gitMinor={K8S_VERSION.split('.')[1]}")
        run(["go", "build", "-trimpath", "-ldflags", ldflags, "-o", f"{BIN}/",
             *[f"k8s.io/kubernetes/cmd/{b}" for b in missing]], cwd=ROOT / "e2e" / "tools")
    if not (BIN / "kwok").exists():
        log(f"building kwok {KWOK_VERSION}")
        run(["go", "install", f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"],
            env={**os.environ, "GOBIN": str(BIN)})
    if not (BIN / "helm").exists():
        # helm's own module, no replace lines: go install builds exactly the pinned release.
        log(f"building helm {HELM_VERSION}")
        run(["go", "install", "-trimpath", "-ldflags",
             f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
             f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}"], env={**os.environ, "GOBIN": str(BIN)})
    if not (BIN / "prometheus").exists():
        log(f"building prometheus {PROMETHEUS_RELEASE} ({PROMETHEUS_VERSION}) from its Go module "
            "(first time: about 8 minutes)")
        version = "github.com/prometheus/common/version"
        run(["go", "install", "-trimpath", "-ldflags",
             f"-s -w -X {version}.Version={PROMETHEUS_RELEASE} "
             f"-X {version}.Revision={PROMETHEUS_VERSION} -X {version}.Branch=release "
             f"-X {version}.BuildUser=agentgraph",
             f"{PROMETHEUS_MODULE}/cmd/prometheus@{PROMETHEUS_VERSION}"],
            env={**os.environ, "GOBIN": str(BIN)})
    if not (BIN / "etcd").exists():
        # etcd 3.6, the version Kubernetes pins: Debian's 3.4 lacks RequestWatchProgress, so
        # kwok's streaming node watch keeps ending, heartbeats lapse and the node controller
        # taints nodes NotReady and evicts pods.
        log("building etcd from Go modules")
        run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(BIN / "etcd"),
             "go.etcd.io/etcd/server/v3"], cwd=ROOT / "e2e" / "tools")


# ---------------------------------------------------------------- PKI


def _openssl(*args: str) -> None:
    run(["openssl", *args], cwd=PKI, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _cert(name: str, subject: str, ca: str, ext: str) -> None:
    (PKI / f"{name}.ext").write_text(ext)
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", subject)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.crt", "-days", "365", "-extfile", f"{name}.ext")


def pki() -> None:
    if (PKI / "admin.crt").exists():
        return
    PKI.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "front-proxy-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key",
                 "-out", f"{ca}.crt", "-days", "365", "-subj", f"/CN=agentgraph-local-{ca}")
    _cert("apiserver", "/CN=kube-apiserver", "ca",
          "subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,"
          "DNS:kubernetes.default,DNS:kubernetes.default.svc\n"
          "extendedKeyUsage=serverAuth\n")
    _cert("admin", "/O=system:masters/CN=kubernetes-admin", "ca",
          "extendedKeyUsage=clientAuth\n")
    _cert("front-proxy-client", "/CN=front-proxy-client", "front-proxy-ca",
          "extendedKeyUsage=clientAuth\n")
    _openssl("genrsa", "-out", "sa.key", "2048")
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub")


def kubeconfig() -> None:
    config = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "agentgraph-local", "cluster": {
            "server": f"https://127.0.0.1:{APISERVER_PORT}",
            "certificate-authority": str(PKI / "ca.crt")}}],
        "users": [{"name": "admin", "user": {
            "client-certificate": str(PKI / "admin.crt"),
            "client-key": str(PKI / "admin.key")}}],
        "contexts": [{"name": "agentgraph-local",
                      "context": {"cluster": "agentgraph-local", "user": "admin"}}],
        "current-context": "agentgraph-local",
    }
    KUBECONFIG.write_text(yaml.safe_dump(config))


# ---------------------------------------------------------------- processes


def _start_time(pid: int) -> int | None:
    """A process's start time (clock ticks since boot, from /proc): with the PID it names one
    process, so a PID the system gave to someone else since is never signalled."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


Proc = tuple[int, int | None]  # pid, start time


def _pids() -> dict[str, Proc]:
    raw = json.loads(PIDS.read_text()) if PIDS.exists() else {}
    return {name: (v, None) if isinstance(v, int) else (int(v[0]), v[1])
            for name, v in raw.items()}


def _alive(proc: Proc) -> bool:
    """The recorded process is still running: the PID and its start time both match. A record
    without a start time (an older checkout's) names no process for certain: never ours."""
    pid, started = proc
    return started is not None and _start_time(pid) == started


def _kill(proc: Proc, sig: int) -> None:
    """Signal the recorded process's group, only while it is that very process: a pidfd is
    opened first and the start time checked after, so the PID cannot pass to another process
    between the check and the signal (a process group's id stays taken while any member
    lives)."""
    try:
        fd = os.pidfd_open(proc[0])
    except OSError:
        return  # gone
    try:
        if not _alive(proc):
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(fd, sig)
            os.killpg(proc[0], sig)
    finally:
        os.close(fd)


def _start(name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
    pids = _pids()
    if name in pids and _alive(pids[name]):
        return
    LOGS.mkdir(parents=True, exist_ok=True)
    out = (LOGS / f"{name}.log").open("ab")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            env=env)
    pids[name] = (proc.pid, _start_time(proc.pid))
    PIDS.write_text(json.dumps(pids))


def _wait(what: str, check: Any, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    raise SystemExit(f"cluster: {what} not ready after {timeout:.0f} s; see {LOGS}")


def _readyz() -> bool:
    ctx = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
    ctx.load_cert_chain(str(PKI / "admin.crt"), str(PKI / "admin.key"))
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{APISERVER_PORT}/readyz",
                                    context=ctx, timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _etcd_health() -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ETCD_PORT}/health", timeout=2) as r:
            return b'"true"' in r.read()
    except (urllib.error.URLError, OSError):
        return False


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def start() -> None:
    p = str(PKI)
    pids = _pids()
    for port, owner in ((ETCD_PORT, "etcd"), (APISERVER_PORT, "kube-apiserver")):
        if not _port_free(port) and not (owner in pids and _alive(pids[owner])):
            raise SystemExit(f"cluster: 127.0.0.1:{port} is taken by a process this checkout did "
                             "not start (another checkout's cluster? run `make cluster-down` "
                             "there)")
    _start("etcd", [str(BIN / "etcd"), "--data-dir", str(STATE / "etcd"), "--name", "local",
                    "--listen-client-urls", f"http://127.0.0.1:{ETCD_PORT}",
                    "--advertise-client-urls", f"http://127.0.0.1:{ETCD_PORT}",
                    "--listen-peer-urls", "http://127.0.0.1:2380",
                    "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                    "--initial-cluster", "local=http://127.0.0.1:2380",
                    "--unsafe-no-fsync"])
    _wait("etcd", _etcd_health)
    _start("kube-apiserver", [
        str(BIN / "kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{ETCD_PORT}",
        "--bind-address=127.0.0.1", f"--secure-port={APISERVER_PORT}",
        "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
        f"--tls-cert-file={p}/apiserver.crt", f"--tls-private-key-file={p}/apiserver.key",
        f"--client-ca-file={p}/ca.crt",
        "--service-account-issuer=https://kubernetes.default.svc",
        f"--service-account-key-file={p}/sa.pub",
        f"--service-account-signing-key-file={p}/sa.key",
        "--service-cluster-ip-range=10.96.0.0/16",
        "--authorization-mode=Node,RBAC", "--allow-privileged=true",
        f"--requestheader-client-ca-file={p}/front-proxy-ca.crt",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={p}/front-proxy-client.crt",
        f"--proxy-client-key-file={p}/front-proxy-client.key",
    ])
    _wait("kube-apiserver /readyz", _readyz)
    common = [f"--kubeconfig={KUBECONFIG}", f"--authentication-kubeconfig={KUBECONFIG}",
              f"--authorization-kubeconfig={KUBECONFIG}", "--bind-address=127.0.0.1",
              "--leader-elect=false", "--kube-api-qps=300", "--kube-api-burst=600",
              f"--client-ca-file={p}/ca.crt",
              f"--requestheader-client-ca-file={p}/front-proxy-ca.crt"]
    _start("kube-controller-manager", [
        str(BIN / "kube-controller-manager"), *common, "--secure-port=10257",
        f"--service-account-private-key-file={p}/sa.key", f"--root-ca-file={p}/ca.crt",
        "--use-service-account-credentials=false", "--controllers=*,-nodeipam",
    ])
    serving = [f for f in common if not f.startswith(("--kubeconfig", "--leader-elect",
                                                        "--kube-api-"))]
    _start("kube-scheduler", [str(BIN / "kube-scheduler"), f"--config={scheduler_config()}",
                              *serving, "--secure-port=10259"])
    _start("kwok", [str(BIN / "kwok"), f"--kubeconfig={KUBECONFIG}", f"--config={kwok_config()}",
                    "--manage-all-nodes=false",
                    f"--manage-nodes-with-label-selector={KWOK_LABEL}=true",
                    # Pod IPs in 127.0.0.0/8, all loopback on Linux: the pod runner's processes
                    # listen on them, and Prometheus's pod discovery reaches them there.
                    "--server-address=127.0.0.1:10247", f"--cidr={POD_CIDR}",
                    "--node-ip=127.0.0.1",
                    # Without it kwok renews no Lease: the node controller marks every node
                    # NotReady after its grace period (and their pods not Ready, which kwok
                    # never undoes) until node-initialize makes them Ready again, every ~55 s.
                    f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}"])
    _start("pod-runner", [sys.executable, str(ROOT / "e2e" / "podrunner.py"),
                          f"--kubeconfig={KUBECONFIG}", f"--state={PODS}",
                          f"--agentgraph={Path(sys.executable).parent / 'agentgraph'}"])
    start_prometheus()


def prometheus_config() -> Path:
    """Scrape every pod that asks for it (the prometheus.io annotations the operator puts on
    gateways and workers), found by Kubernetes service discovery against our API server."""
    config = {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s",
                   "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
                   "scrape_timeout": f"{SCRAPE_INTERVAL_S - 1}s"},
        "scrape_configs": [{
            "job_name": "agentgraph-pods",
            "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(KUBECONFIG)}],
            "relabel_configs": [
                {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
                 "action": "keep", "regex": "true"},
                {"source_labels": ["__meta_kubernetes_pod_phase"], "action": "keep",
                 "regex": "Running"},
                # one target per pod (discovery gives one per container port): the annotated port
                {"source_labels": ["__address__",
                                   "__meta_kubernetes_pod_annotation_prometheus_io_port"],
                 "regex": r"([^:]+)(?::\d+)?;(\d+)", "replacement": "$1:$2",
                 "target_label": "__address__"},
                {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
                 "regex": "(.+)", "target_label": "__metrics_path__"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            ],
        }],
    }
    target = STATE / "prometheus.yml"
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


def _prometheus_ready() -> bool:
    try:
        with urllib.request.urlopen(f"{PROMETHEUS_URL}/-/ready", timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_prometheus() -> None:
    pids = _pids()
    if not _port_free(PROMETHEUS_PORT) and not ("prometheus" in pids
                                                and _alive(pids["prometheus"])):
        raise SystemExit(f"cluster: 127.0.0.1:{PROMETHEUS_PORT} is taken by a process this "
                         "checkout did not start")
    _start("prometheus", [str(BIN / "prometheus"), f"--config.file={prometheus_config()}",
                          f"--storage.tsdb.path={STATE / 'prometheus'}",
                          "--storage.tsdb.retention.time=6h",
                          f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"])
    _wait("prometheus /-/ready", _prometheus_ready)


def stop_prometheus() -> None:
    """For the e2e test of a Prometheus outage: `start_prometheus` brings it back (its data
    directory is kept)."""
    pids = _pids()
    proc = pids.pop("prometheus", None)
    if proc is not None and _alive(proc):
        _stop({"prometheus": proc})
    PIDS.write_text(json.dumps(pids))


# Accelerator pools want bin packing: the default scoring (LeastAllocated) spreads replicas, so
# three TP2 pods on two 8-device nodes leave 2 + 2 free and a TP4 pod pending although the pool
# had room for it. MostAllocated fills a node before starting the next, as GPU clusters
# configure it. The same profile is what the README recommends for real pools.
ACCELERATOR_RESOURCES = ("nvidia.com/gpu", "amd.com/gpu", "habana.ai/gaudi")


def scheduler_config() -> Path:
    config = {
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": str(KUBECONFIG), "qps": 300, "burst": 600},
        "leaderElection": {"leaderElect": False},
        "profiles": [{
            "schedulerName": "default-scheduler",
            "pluginConfig": [{"name": "NodeResourcesFit", "args": {"scoringStrategy": {
                "type": "MostAllocated",
                "resources": [*({"name": r, "weight": 5} for r in ACCELERATOR_RESOURCES),
                              {"name": "cpu", "weight": 1}, {"name": "memory", "weight": 1}],
            }}}],
        }],
    }
    target = STATE / "scheduler.yaml"
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


# kwok has no built-in behaviour: Stages say how nodes heartbeat and pods start. Use the ones
# kwok itself ships for this version (its "fast" set: nodes Ready with lease heartbeats, pods
# Running with an IP, deleted pods finalised), read from the pinned module, not copied here.
KWOK_STAGES = ("node/fast", "node/heartbeat-with-lease", "pod/fast")


def kwok_config() -> Path:
    """kwok's shipped Stages, except that its pod-ready Stage leaves the operator's pods alone:
    for those, our pod-start Stage gives an IP and Running but not Ready, and the pod runner
    makes them Ready once their process answers its readiness probe."""
    found = run(["go", "mod", "download", "-json", f"sigs.k8s.io/kwok@{KWOK_VERSION}"],
                capture_output=True, cwd=STATE)
    module = Path(json.loads(found.stdout)["Dir"])
    docs: list[Any] = []
    for stage in KWOK_STAGES:
        for path in sorted((module / "kustomize" / "stage" / stage).glob("*.yaml")):
            if path.name != "kustomization.yaml":
                docs.append(yaml.safe_load(path.read_text()))
    ours = {"key": f'.metadata.labels["{COMPONENT}"]'}
    for doc in docs:
        if doc["metadata"]["name"] == "pod-ready":
            doc["spec"]["selector"]["matchExpressions"].append({**ours,
                                                                "operator": "DoesNotExist"})
    docs.append(pod_start_stage(ours))
    target = STATE / "kwok.yaml"
    target.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return target


def pod_start_stage(ours: dict[str, str]) -> dict[str, Any]:
    """An operator pod once bound: an IP from kwok's pool, Running, its container started but
    not ready (the pod runner decides readiness, from the process)."""
    template = "\n".join([
        "{{ $now := Now }}",
        "conditions:",
        *(f"- {{type: {t}, status: \"{s}\", lastTransitionTime: {{{{ $now | Quote }}}}}}"
          for t, s in (("Initialized", "True"), ("Ready", "False"),
                       ("ContainersReady", "False"))),
        "containerStatuses:",
        "{{ range .spec.containers }}",
        "- {name: {{ .name | Quote }}, image: {{ .image | Quote }}, ready: false, "
        "restartCount: 0, started: false, state: {waiting: {reason: ContainerCreating}}}",
        "{{ end }}",
        "hostIP: {{ NodeIPWith .spec.nodeName | Quote }}",
        "podIP: {{ PodIPWith .spec.nodeName ( or .spec.hostNetwork false ) "
        "( or .metadata.uid \"\" ) ( or .metadata.name \"\" ) "
        "( or .metadata.namespace \"\" ) | Quote }}",
        "phase: Running",
        "startTime: {{ $now | Quote }}",
    ])
    return {"apiVersion": "kwok.x-k8s.io/v1alpha1", "kind": "Stage",
            "metadata": {"name": "agentgraph-pod-start"},
            "spec": {"resourceRef": {"apiGroup": "v1", "kind": "Pod"},
                     "selector": {"matchExpressions": [
                         {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"},
                         {"key": ".status.podIP", "operator": "DoesNotExist"},
                         {**ours, "operator": "Exists"}]},
                     "next": {"statusTemplate": template}}}


def kubectl(*args: str, stdin: str | None = None) -> str:
    return run([str(BIN / "kubectl"), f"--kubeconfig={KUBECONFIG}", *args], input=stdin,
               capture_output=True).stdout


OPERATOR_METRICS_PORT = 18080  # not 8080: pods listen on 127.1.x.y:8080, and 0.0.0.0 is theirs
OPERATOR_LIVENESS = "http://127.0.0.1:18081/healthz"


def start_operator() -> None:
    """The operator as a local process against this cluster, replanning from its Prometheus,
    recorded for `down`."""
    settings = STATE / "operator.yaml"
    settings.write_text(yaml.safe_dump({
        "prometheusUrl": PROMETHEUS_URL, "metricsPort": OPERATOR_METRICS_PORT,
        "liveness": OPERATOR_LIVENESS,
        "replan": {"intervalSeconds": 10, "windowSeconds": 30, "cooldownSeconds": 40}}))
    _start("operator", [sys.executable, "-m", "agentgraph.controller", "--config", str(settings)],
           env={**os.environ, "KUBECONFIG": str(KUBECONFIG)})


# ---------------------------------------------------------------- nodes


def node_objects() -> list[dict[str, Any]]:
    nodes = []
    for path in sorted((ROOT / "hardware_profiles").glob("*.yaml")):
        profile = yaml.safe_load(path.read_text())
        name, spec = profile["metadata"]["name"], profile["spec"]
        pool = spec["pool"]
        cpu = spec["deviceType"] == "cpu"
        per_node = int(pool.get("devicesPerNode", 1))
        cores = int(spec["cores"] * (1 if cpu else per_node))
        memory_gb = int(spec["memoryGB"]) if cpu else 64 * per_node
        resources = {"cpu": str(cores), "memory": f"{memory_gb}Gi", "pods": "110"}
        if not cpu:
            resources[spec["resourceName"]] = str(per_node)
        for i in range(NODES.get(name, 0)):
            node = f"{name}-{i}"
            nodes.append({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {
                    "name": node,
                    "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
                    "labels": {**pool["nodeSelector"], KWOK_LABEL: "true", "type": "kwok",
                               "kubernetes.io/hostname": node, "kubernetes.io/os": "linux",
                               "kubernetes.io/arch": "amd64"},
                },
                "spec": {"taints": [
                    {k: v for k, v in t.items() if v is not None} for t in pool.get("taints", [])
                ]},
                "status": {"capacity": resources, "allocatable": resources,
                           "nodeInfo": {"kubeletVersion": "fake", "architecture": "amd64",
                                        "operatingSystem": "linux"}},
            })
    return nodes


def create_nodes() -> None:
    docs = node_objects()
    kubectl("apply", "--server-side", "--field-manager=agentgraph-cluster", "-f", "-",
            stdin="\n---\n".join(json.dumps(d) for d in docs))

    def all_ready() -> bool:
        out = json.loads(kubectl("get", "nodes", "-l", f"{KWOK_LABEL}=true", "-o", "json"))
        ready = [n for n in out["items"] if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in n.get("status", {}).get("conditions", []))]
        return len(ready) == len(docs)

    _wait(f"{len(docs)} kwok nodes", all_ready)
    pools = {d["metadata"]["name"].rsplit("-", 1)[0] for d in docs}
    log(f"{len(docs)} nodes ready across {len(pools)} pools")


# ---------------------------------------------------------------- commands


def up() -> None:
    started = time.monotonic()
    build()
    pki()
    kubeconfig()
    start()
    create_nodes()
    log(f"up in {time.monotonic() - started:.1f} s; export KUBECONFIG={KUBECONFIG}; "
        f"Prometheus at {PROMETHEUS_URL}")


def _stop(pids: dict[str, Proc]) -> None:
    """SIGTERM each process group (last started first), SIGKILL what is left after 20 s."""
    for name in reversed(list(pids)):
        _kill(pids[name], signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(p) for p in pids.values()):
        time.sleep(0.2)
    for name, proc in pids.items():
        if _alive(proc):
            _kill(proc, signal.SIGKILL)
            log(f"{name} ({proc[0]}) did not stop on SIGTERM: killed")


def _reap_pods() -> int:
    """Pod processes a pod runner that died without cleaning up left behind."""
    table = PODS / "processes.json"
    if not table.exists():
        return 0
    left = {k: (int(v[0]), v[1]) for k, v in json.loads(table.read_text()).items()}
    for proc in left.values():
        _kill(proc, signal.SIGKILL)
    table.unlink()
    return sum(1 for p in left.values() if p[1] is not None)


def down() -> None:
    pids = _pids()
    _stop(pids)
    reaped = _reap_pods()
    PIDS.unlink(missing_ok=True)
    shutil.rmtree(STATE / "etcd", ignore_errors=True)
    shutil.rmtree(STATE / "prometheus", ignore_errors=True)
    shutil.rmtree(PODS, ignore_errors=True)
    log(f"stopped {len(pids)} processes" + (f" and {reaped} left by the pod runner"
                                            if reaped else ""))


def restart_apiserver() -> None:
    """For the e2e test of an API server outage: stop kube-apiserver, wait until its port is
    free, and start it again on the same etcd (the rest of the cluster stays up)."""
    pids = _pids()
    proc = pids.pop("kube-apiserver", None)
    if proc is None or not _alive(proc):
        raise SystemExit("cluster: kube-apiserver is not running here (make cluster)")
    _stop({"kube-apiserver": proc})
    PIDS.write_text(json.dumps(pids))
    _wait("the API server's port to free", lambda: _port_free(APISERVER_PORT), 30)
    start()  # starts what is not running: only the API server
    log("kube-apiserver restarted")


def stop_operator() -> None:
    """Stop a demo operator, so the e2e suite's own operator can take the Lease."""
    pids = _pids()
    proc = pids.pop("operator", None)
    if proc is not None and _alive(proc):
        _stop({"operator": proc})
        log("stopped the demo operator")
    PIDS.write_text(json.dumps(pids))


KIND_VERSION = "v0.32.0"
KIND_KUBECONFIG = CACHE / "kind" / "kubeconfig"


def kind_up() -> None:
    """A kind cluster (needs Docker) with each worker dressed as its pool: taints and devices.
    The e2e suite then runs against it with KUBECONFIG=.cache/kind/kubeconfig."""
    if shutil.which("docker") is None:
        raise SystemExit("cluster: kind needs a container engine (docker); use `make cluster`")
    if not (BIN / "kind").exists():
        run(["go", "install", f"sigs.k8s.io/kind@{KIND_VERSION}"],
            env={**os.environ, "GOBIN": str(BIN)})
    KIND_KUBECONFIG.parent.mkdir(parents=True, exist_ok=True)
    run([str(BIN / "kind"), "create", "cluster", "--config", str(ROOT / "e2e" / "kind.yaml"),
         "--kubeconfig", str(KIND_KUBECONFIG)])
    base = [str(BIN / "kubectl") if (BIN / "kubectl").exists() else "kubectl",
            f"--kubeconfig={KIND_KUBECONFIG}"]
    profiles = {p.stem: yaml.safe_load(p.read_text())["spec"]
                for p in (ROOT / "hardware_profiles").glob("*.yaml")}
    nodes = json.loads(run([*base, "get", "nodes", "-o", "json"], capture_output=True).stdout)
    for node in nodes["items"]:
        pool = node["metadata"].get("labels", {}).get("agentgraph.dev/pool")
        spec = profiles.get(pool or "")
        if spec is None or spec["deviceType"] == "cpu":
            continue
        name = node["metadata"]["name"]
        devices = str(spec["pool"].get("devicesPerNode", 1))
        resource = spec["resourceName"].replace("/", "~1")
        patch = json.dumps([{"op": "add", "path": f"/status/capacity/{resource}",
                             "value": devices}])
        run([*base, "patch", "node", name, "--subresource=status", "--type=json", "-p", patch])
        for taint in spec["pool"].get("taints", []):
            value = f"={taint['value']}" if taint.get("value") else ""
            run([*base, "taint", "node", name, f"{taint['key']}{value}:{taint['effect']}",
                 "--overwrite"])
    log(f"kind cluster up; export KUBECONFIG={KIND_KUBECONFIG}")


def status() -> int:
    pids = _pids()
    for name, proc in pids.items():
        print(f"{name:26s} pid {proc[0]:<8d} {'running' if _alive(proc) else 'DEAD'}")
    return 0 if pids and all(_alive(p) for p in pids.values()) else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("command",
                    choices=["up", "down", "status", "build", "stop-operator", "kind-up",
                             "stop-prometheus", "start-prometheus", "restart-apiserver"])
    args = ap.parse_args()
    if args.command == "up":
        up()
    elif args.command == "down":
        down()
    elif args.command == "build":
        build()
    elif args.command == "stop-operator":
        stop_operator()
    elif args.command == "kind-up":
        kind_up()
    elif args.command == "stop-prometheus":
        stop_prometheus()
    elif args.command == "start-prometheus":
        start_prometheus()
    elif args.command == "restart-apiserver":
        restart_apiserver()
    else:
        return status()
    return 0


if __name__ == "__main__":
    sys.exit(main())
