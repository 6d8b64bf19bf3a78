"""The Helm chart on a real control plane: lint, deterministic rendering, a server-side dry run,
install, the operator running with the chart's ServiceAccount identity (so its RBAC is proven
sufficient) until an AgentGraph is Ready, upgrade, uninstall keeping the CRDs; and an AgentGraph
applied twice server-side changes nothing (what Argo CD's diff relies on).

No image runs here (kwok pods run no containers), so the operator runs as a local process that
authenticates as the chart's ServiceAccount with a token from the TokenRequest API.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from builders import EXAMPLES_DIR, ROOT
from conftest import Kube, tool, wait_for

CHART = ROOT / "charts" / "agentgraph-operator"
RELEASE = "agentgraph"
NAMESPACE = "agentgraph-system"
FULLNAME = f"{RELEASE}-agentgraph-operator"
CRDS = ("agentgraphs.agentgraph.dev", "hardwareprofiles.agentgraph.dev")
VOICE = yaml.safe_load((EXAMPLES_DIR / "voice-agent.yaml").read_text())
WAIT_READY_S = 120.0


class Helm:
    def __init__(self, kubeconfig: str) -> None:
        self.base = [tool("helm"), f"--kubeconfig={kubeconfig}"]

    def __call__(self, *args: str) -> str:
        done = subprocess.run([*self.base, *args], text=True, capture_output=True, check=False)
        if done.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout


@pytest.fixture(scope="module")
def helm() -> Helm:
    return Helm(os.environ["KUBECONFIG"])


def adopt(kube: Kube) -> None:
    """CRDs applied before with kubectl (by other tests, or by hand) get the ownership marks
    Helm checks, so the release takes them over instead of refusing (see README)."""
    names = [f"crd/{c}" for c in CRDS if kube.attempt("get", f"crd/{c}").returncode == 0]
    for name in names:
        kube("annotate", "--overwrite", name, f"meta.helm.sh/release-name={RELEASE}",
             f"meta.helm.sh/release-namespace={NAMESPACE}")
        kube("label", "--overwrite", name, "app.kubernetes.io/managed-by=Helm")


@pytest.fixture(scope="module")
def release(kube: Kube, helm: Helm) -> Iterator[str]:
    adopt(kube)
    helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--create-namespace",
         "--set", "hardwareProfiles.builtin=true", "--wait", "--timeout", "120s")
    yield RELEASE
    if RELEASE in helm("list", "-n", NAMESPACE, "-q").split():
        helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait")


def render(helm: Helm, *sets: str) -> str:
    args = [a for s in sets for a in ("--set", s)]
    return helm("template", RELEASE, str(CHART), "-n", NAMESPACE, *args)


def test_lint_and_render_twice_identically(helm: Helm) -> None:
    assert "0 chart(s) failed" in helm("lint", "--strict", str(CHART))
    for sets in ((), ("hardwareProfiles.builtin=true", "metrics.serviceMonitor.enabled=true")):
        first, second = render(helm, *sets), render(helm, *sets)
        assert first == second
    kinds = [d["kind"] for d in yaml.safe_load_all(render(helm)) if d]
    assert kinds.count("CustomResourceDefinition") == 2
    assert "helm.sh/resource-policy: keep" in render(helm)
    assert "CustomResourceDefinition" not in render(helm, "crds.enabled=false")
    assert "helm.sh/resource-policy" not in render(helm, "crds.keep=false")
    # A PodDisruptionBudget keeps a standby through a drain, where there is one to keep.
    [pdb] = [d for d in yaml.safe_load_all(render(helm)) if d and d["kind"] ==
             "PodDisruptionBudget"]
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "PodDisruptionBudget" not in render(helm, "replicaCount=1")
    assert "PodDisruptionBudget" not in render(helm, "podDisruptionBudget.enabled=false")


def test_a_misspelt_value_is_refused_naming_it(helm: Helm) -> None:
    done = subprocess.run([*helm.base, "template", RELEASE, str(CHART), "--set",
                           "replicaCont=3"], text=True, capture_output=True, check=False)
    assert done.returncode != 0 and "replicaCont" in done.stderr


def test_rendered_chart_passes_a_server_side_dry_run(kube: Kube, helm: Helm) -> None:
    kube.attempt("create", "namespace", NAMESPACE)  # dry runs need the namespace to exist
    out = kube("apply", "--server-side", "--dry-run=server", "--force-conflicts",
               "--field-manager=helm-dry-run", "-f", "-",
               stdin=render(helm, "hardwareProfiles.builtin=true"))
    for kind in ("customresourcedefinition", "deployment.apps", "clusterrole.rbac",
                 "role.rbac", "serviceaccount", "configmap", "poddisruptionbudget.policy"):
        assert kind in out, out


def service_account_kubeconfig(kube: Kube, folder: Path, account: str = FULLNAME,
                               namespace: str = NAMESPACE) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount (a TokenRequest token)."""
    token = kube("create", "token", account, "-n", namespace, "--duration=1h").strip()
    admin = json.loads(kube("config", "view", "--raw", "--minify", "--flatten", "-o", "json"))
    config = {"apiVersion": "v1", "kind": "Config", "clusters": admin["clusters"],
              "users": [{"name": "operator", "user": {"token": token}}],
              "contexts": [{"name": "operator", "context": {
                  "cluster": admin["clusters"][0]["name"], "user": "operator"}}],
              "current-context": "operator"}
    path = folder / f"{account}.kubeconfig"
    path.write_text(json.dumps(config))
    return path


def release_settings(kube: Kube, fullname: str, namespace: str, folder: Path) -> Path:
    """The release's settings and profiles, as its pod would mount them, at local paths."""
    settings = yaml.safe_load(kube("get", "configmap", fullname, "-n", namespace,
                                   "-o", "jsonpath={.data.config\\.yaml}"))
    (folder / "profiles.yaml").write_text(kube(
        "get", "configmap", f"{fullname}-profiles", "-n", namespace,
        "-o", "jsonpath={.data.profiles\\.yaml}"))
    settings["profilesFile"] = str(folder / "profiles.yaml")
    (folder / "config.yaml").write_text(yaml.safe_dump(settings))
    return folder / "config.yaml"


def run_operator(config: Path, kubeconfig: Path, lease_namespace: str, port: int,
                 log: Path) -> subprocess.Popen[bytes]:
    """The operator as a local process with the given identity (no image runs here)."""
    return subprocess.Popen(
        [sys.executable, "-m", "agentgraph.controller", "--config", str(config),
         "--liveness", f"http://127.0.0.1:{port}/healthz", "--metrics-port", str(port + 100)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAMESPACE": lease_namespace})


def stop_operator(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def graph_ready(kube: Kube, namespace: str, name: str) -> bool:
    obj = kube.json("get", "agentgraphs.agentgraph.dev", name, "-n", namespace)
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in obj.get("status", {}).get("conditions", []))


def no_refusals(log: Path) -> None:
    # An API refusal reads "(403)" / "Forbidden" in the client's error; a bare "403" also
    # turns up in log timestamps ("11:24:34,403").
    text = log.read_text()
    assert "Forbidden" not in text and "(403)" not in text, text[-3000:]


def test_the_operator_as_the_charts_service_account_reaches_ready(
        kube: Kube, release: str, namespace: str, tmp_path: Path) -> None:
    who = service_account_kubeconfig(kube, tmp_path)
    as_operator = Kube(str(who))
    # The identity is the chart's ServiceAccount, and RBAC binds it, nothing more:
    assert as_operator("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}") == \
        f"system:serviceaccount:{NAMESPACE}:{FULLNAME}"
    assert as_operator.attempt("auth", "can-i", "delete", "nodes").stdout.strip() == "no"
    assert as_operator.attempt("auth", "can-i", "create", "secrets").stdout.strip() == "no"
    config = release_settings(kube, FULLNAME, NAMESPACE, tmp_path)
    # Profiles someone else installed (the other modules, with kubectl) are theirs: the
    # operator must not take them over. All but one go; the one left must stay as it is.
    kube("delete", "hardwareprofiles.agentgraph.dev", "-l", "!agentgraph.dev/installed-by",
         "--field-selector", "metadata.name!=a100")
    kube("label", "hardwareprofiles.agentgraph.dev", "a100", "e2e/owner=someone-else",
         "--overwrite")
    log = tmp_path / "operator.log"
    proc = run_operator(config, who, NAMESPACE, 18281, log)
    graphs = namespace
    try:
        kube("apply", "-n", graphs, "--server-side", "--field-manager=e2e", "-f", "-",
             stdin=yaml.safe_dump(VOICE))
        wait_for("voice-agent Ready under the chart's RBAC",
                 lambda: graph_ready(kube, graphs, "voice-agent"), WAIT_READY_S)
        # hardwareProfiles.builtin: the operator installed all shipped profiles, marked.
        installed = kube.json("get", "hardwareprofiles.agentgraph.dev", "-l",
                              "agentgraph.dev/installed-by=operator-settings")["items"]
        shipped = sorted(p.stem for p in (ROOT / "hardware_profiles").glob("*.yaml"))
        assert sorted(i["metadata"]["name"] for i in installed) == [
            name for name in shipped if name != "a100"]
        theirs = kube.json("get", "hardwareprofiles.agentgraph.dev", "a100")["metadata"]
        assert theirs["labels"].get("e2e/owner") == "someone-else"
        assert "agentgraph.dev/installed-by" not in theirs["labels"]
        with urllib.request.urlopen("http://127.0.0.1:18281/healthz", timeout=5) as r:
            assert r.status == 200
        no_refusals(log)
        lease = kube.json("get", "lease", "agentgraph-operator", "-n", NAMESPACE)
        assert lease["spec"]["holderIdentity"]  # it led from the release's namespace
        # The operator wrote no part of the spec and added no finalizer (Argo CD would see it).
        obj = kube.json("get", "agentgraphs.agentgraph.dev", "voice-agent", "-n", graphs,
                        "--show-managed-fields")
        spec_writers = {m["manager"] for m in obj["metadata"]["managedFields"]
                        if "f:spec" in m.get("fieldsV1", {})}
        assert spec_writers == {"e2e"}
        assert not obj["metadata"].get("finalizers")
        for child in kube.json("get", "deployments,services", "-n", graphs)["items"]:
            labels = child["metadata"]["labels"]
            assert "app.kubernetes.io/instance" not in labels
            assert not any(k.startswith("argocd.argoproj.io/") for k in labels)
    finally:
        stop_operator(proc)


SCOPED = "scoped"  # a second release, namespaced: watchNamespaces
SCOPED_NAMESPACE = "agentgraph-scoped"
SCOPED_FULLNAME = f"{SCOPED}-agentgraph-operator"


def test_a_namespaced_install_acts_only_in_its_namespaces(
        kube: Kube, helm: Helm, release: str, tmp_path: Path) -> None:
    """watchNamespaces: Roles in the listed namespace, a ClusterRole for the cluster-scoped part
    only. Impersonation shows what the identity may and may not do. The operator run as it
    plans a graph in its namespace, around devices held by a pod in a namespace it does not
    watch, and leaves a graph outside its namespace alone."""
    watched, outside = "e2e-scoped-in", "e2e-scoped-out"
    for ns in (watched, outside):
        kube("create", "namespace", ns)
    helm("install", SCOPED, str(CHART), "-n", SCOPED_NAMESPACE, "--create-namespace",
         "--set", "crds.enabled=false", "--set", "replicaCount=1",
         "--set", f"watchNamespaces={{{watched}}}", "--wait", "--timeout", "120s")
    proc = None
    try:
        who = f"system:serviceaccount:{SCOPED_NAMESPACE}:{SCOPED_FULLNAME}"

        def can(*args: str) -> str:
            return kube.attempt("auth", "can-i", *args, f"--as={who}").stdout.strip()

        status = ("agentgraphs.agentgraph.dev", "--subresource=status")
        allowed = [("create", "deployments", "-n", watched), ("patch", *status, "-n", watched),
                   ("create", "rolebindings", "-n", watched), ("list", "pods", "-A"),
                   ("watch", "nodes"), ("patch", "hardwareprofiles.agentgraph.dev"),
                   ("create", "events", "-n", SCOPED_NAMESPACE),
                   ("update", "leases/agentgraph-operator", "-n", SCOPED_NAMESPACE)]
        refused = [("get", "secrets", "-n", watched), ("list", "secrets", "-A"),
                   ("get", "secrets", "-n", SCOPED_NAMESPACE),
                   ("create", "deployments", "-n", outside), ("patch", *status, "-n", outside),
                   ("list", "agentgraphs.agentgraph.dev", "-A"),
                   ("create", "configmaps", "-n", outside), ("create", "events", "-n", "default"),
                   ("create", "roles", "-n", outside), ("delete", "pods", "-n", watched),
                   ("patch", "nodes"), ("create", "deployments", "-n", SCOPED_NAMESPACE)]
        assert [a for a in allowed if can(*a) != "yes"] == []
        assert [a for a in refused if can(*a) != "no"] == []
        # Every gaudi3 device is taken by a pod in a namespace the operator does not watch;
        # with them free, the voice agent's reasoning step would go there.
        free = json.loads(subprocess.run(
            [str(Path(sys.executable).with_name("agentgraph")), "plan",
             str(EXAMPLES_DIR / "voice-agent.yaml"),
             "--profiles", str(ROOT / "hardware_profiles"), "-o", "json"],
            capture_output=True, text=True, check=True).stdout)
        assert "gaudi3" in {a["pool"] for a in free["assignments"]}
        for node in kube.json("get", "nodes", "-l", "agentgraph.dev/pool=gaudi3")["items"]:
            devices = node["status"]["allocatable"]["habana.ai/gaudi"]
            kube.apply([{"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": f"hog-{node['metadata']['name']}",
                                      "namespace": outside},
                         "spec": {"nodeName": node["metadata"]["name"], "containers": [
                             {"name": "hog", "image": "example.com/hog:1", "resources": {
                                 "requests": {"habana.ai/gaudi": devices},
                                 "limits": {"habana.ai/gaudi": devices}}}]}}])
        before = sorted(p["metadata"]["name"] for p in kube.json(
            "get", "hardwareprofiles.agentgraph.dev")["items"])
        config = release_settings(kube, SCOPED_FULLNAME, SCOPED_NAMESPACE, tmp_path)
        assert yaml.safe_load(config.read_text())["watchNamespaces"] == [watched]
        log = tmp_path / "scoped.log"
        proc = run_operator(config, service_account_kubeconfig(
            kube, tmp_path, SCOPED_FULLNAME, SCOPED_NAMESPACE), SCOPED_NAMESPACE, 18291, log)
        for ns in (watched, outside):
            kube("apply", "-n", ns, "--server-side", "--field-manager=e2e", "-f", "-",
                 stdin=yaml.safe_dump(VOICE))
        wait_for("voice-agent Ready in the watched namespace",
                 lambda: graph_ready(kube, watched, "voice-agent"), WAIT_READY_S)
        plan = kube.json("get", "agentgraphs.agentgraph.dev", "voice-agent", "-n",
                         watched)["status"]["plan"]
        assert "gaudi3" not in {s["pool"] for s in plan["steps"]}, plan["steps"]
        # Outside its namespaces: not planned, no status, no children.
        theirs = kube.json("get", "agentgraphs.agentgraph.dev", "voice-agent", "-n", outside)
        assert not theirs.get("status"), theirs.get("status")
        assert kube.json("get", "deployments,services,configmaps", "-n", outside,
                         "-l", "app.kubernetes.io/managed-by=agentgraph")["items"] == []
        # Its empty profile list prunes nothing the other release installed.
        after = sorted(p["metadata"]["name"] for p in kube.json(
            "get", "hardwareprofiles.agentgraph.dev")["items"])
        assert after == before
        lease = kube.json("get", "lease", "agentgraph-operator", "-n", SCOPED_NAMESPACE)
        assert lease["spec"]["holderIdentity"]
        no_refusals(log)
    finally:
        if proc is not None:
            stop_operator(proc)
        helm("uninstall", SCOPED, "-n", SCOPED_NAMESPACE, "--wait")
        for ns in (watched, outside, SCOPED_NAMESPACE):
            kube("delete", "namespace", ns, "--wait=false", check=False)


def test_an_agentgraph_applied_twice_changes_nothing(kube: Kube, release: str,
                                                     namespace: str) -> None:
    """No operator runs here: the second identical server-side apply must be a no-op, and a
    server-side diff must come back empty, as Argo CD's would."""
    doc = yaml.safe_dump(VOICE)
    args = ("apply", "-n", namespace, "--server-side", "--field-manager=argocd-controller",
            "-f", "-")
    kube(*args, stdin=doc)
    first = kube.json("get", "agentgraphs.agentgraph.dev", "voice-agent", "-n", namespace)
    kube(*args, stdin=doc)
    second = kube.json("get", "agentgraphs.agentgraph.dev", "voice-agent", "-n", namespace)
    assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    diff = kube.attempt("diff", "-n", namespace, "--server-side",
                        "--field-manager=argocd-controller", "-f", "-", stdin=doc)
    assert diff.returncode == 0, diff.stdout + diff.stderr


def test_upgrade_rolls_the_new_settings(kube: Kube, helm: Helm, release: str) -> None:
    before = kube.json("get", "deployment", FULLNAME, "-n", NAMESPACE)
    helm("upgrade", RELEASE, str(CHART), "-n", NAMESPACE, "--reuse-values",
         "--set", "operator.resyncSeconds=30", "--wait", "--timeout", "120s")
    settings = yaml.safe_load(kube("get", "configmap", FULLNAME, "-n", NAMESPACE,
                                   "-o", "jsonpath={.data.config\\.yaml}"))
    assert settings["resyncSeconds"] == 30
    after = kube.json("get", "deployment", FULLNAME, "-n", NAMESPACE)
    key = "checksum/config"
    assert (after["spec"]["template"]["metadata"]["annotations"][key]
            != before["spec"]["template"]["metadata"]["annotations"][key])
    history: list[dict[str, Any]] = json.loads(helm("history", RELEASE, "-n", NAMESPACE,
                                                    "-o", "json"))
    assert [h["revision"] for h in history] == [1, 2]
    for crd in CRDS:
        kube("get", f"crd/{crd}")


def test_uninstall_removes_the_operator_and_keeps_the_crds(kube: Kube, helm: Helm,
                                                           release: str) -> None:
    helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait")
    assert kube.attempt("get", "deployment", FULLNAME, "-n", NAMESPACE).returncode != 0
    assert kube.attempt("get", "clusterrole", FULLNAME).returncode != 0
    for crd in CRDS:  # crds.keep: deleting them would delete every AgentGraph
        kube("get", f"crd/{crd}")
    kube("delete", "namespace", NAMESPACE, "--timeout=60s", check=False)
