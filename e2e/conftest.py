"""e2e fixtures: a real control plane reached through KUBECONFIG (make cluster, or kind)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

WAIT_SCHEDULED_S = 120.0
WAIT_DELETED_S = 60.0


def tool(name: str) -> str:
    """The pinned binary `make cluster` built, else the one on PATH."""
    local = ROOT / ".cache" / "bin" / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise RuntimeError(f"no {name}: run `make cluster` (it builds one) or install it")
    return found


class Kube:
    """kubectl against $KUBECONFIG: the same calls work on the local cluster and on kind."""

    def __init__(self, kubeconfig: str) -> None:
        binary = tool("kubectl")
        # A discovery cache of our own: a stale ~/.kube/cache must not decide what names mean.
        cache = tempfile.mkdtemp(prefix="agentgraph-e2e-kubectl-")
        self.base = [binary, f"--kubeconfig={kubeconfig}", f"--cache-dir={cache}"]

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        done = subprocess.run([*self.base, *args], input=stdin, text=True,
                              capture_output=True, check=False)
        if check and done.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def attempt(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run kubectl and hand back the result whether or not it failed."""
        return subprocess.run([*self.base, *args], input=stdin, text=True, capture_output=True,
                              check=False)

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json"))

    def apply(self, docs: list[dict[str, Any]] | str) -> str:
        text = docs if isinstance(docs, str) else "\n---\n".join(json.dumps(d) for d in docs)
        # --force-conflicts: the chart test leaves profiles the operator applied (its manager).
        return self("apply", "--server-side", "--force-conflicts",
                    "--field-manager=agentgraph-e2e", "-f", "-", stdin=text)


def wait_for(what: str, check: Callable[[], bool], timeout: float) -> None:
    """Poll ``check`` until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="session")
def kube() -> Kube:
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        raise RuntimeError("KUBECONFIG is not set: run the e2e suite through `make e2e`, or "
                           "export KUBECONFIG for your cluster (see README)")
    k = Kube(kubeconfig)
    k("get", "--raw", "/readyz")
    return k


@pytest.fixture()
def namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    name = "e2e-" + request.node.name.replace("_", "-")[:40].strip("-").lower()
    kube("create", "namespace", name)
    yield name
    # Wait until it is gone: its pods hold devices, and the next test plans on what is free.
    kube("delete", "namespace", name, f"--timeout={WAIT_DELETED_S:.0f}s", check=False)


RESYNC_S = 5  # the shortest resync the settings allow: drift is undone within seconds


class Operator:
    """`python -m agentgraph.controller` as a process: start, kill, restart."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []
        self.settings: dict[str, Any] = {}  # more settings for its file (a module's fixture)

    def log(self, index: int) -> str:
        return (self.folder / f"operator-{index}.log").read_text()

    def start(self, port: int = 18081, kubeconfig: str | None = None
              ) -> subprocess.Popen[bytes]:
        """``kubeconfig``: another than the suite's (the shutdown test's, through a proxy)."""
        log = self.folder / f"operator-{len(self.procs)}.log"
        settings = self.folder / "config.yaml"
        settings.write_text(json.dumps({"resyncSeconds": RESYNC_S, **self.settings}))
        proc = subprocess.Popen(
            [sys.executable, "-m", "agentgraph.controller", "--config", str(settings),
             "--liveness", f"http://127.0.0.1:{port}/healthz", "--metrics-port", str(port + 100)],
            stdout=log.open("ab"), stderr=subprocess.STDOUT,
            env={**os.environ, **({"KUBECONFIG": kubeconfig} if kubeconfig else {})},
            start_new_session=True)
        self.procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)

    def stop_all(self) -> None:
        for proc in self.procs:
            self.stop(proc)


def install_crds_and_profiles(kube: Kube) -> None:
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        kube.apply(path.read_text())
    for crd in ("agentgraphs.agentgraph.dev", "hardwareprofiles.agentgraph.dev"):
        kube("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=30s")
    for path in sorted((ROOT / "hardware_profiles").glob("*.yaml")):
        kube.apply(path.read_text())


@pytest.fixture(scope="module")
def operator(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """The operator for one test module (each module's operator takes the Lease in turn)."""
    install_crds_and_profiles(kube)
    op = Operator(tmp_path_factory.mktemp("operator"))
    op.start()
    yield op
    op.stop_all()


@contextlib.contextmanager
def reach(kube: Kube, namespace: str, pod: dict[str, Any], port: int) -> Iterator[str]:
    """A base URL for ``port`` of ``pod``: its IP on the local cluster, where every pod IP is a
    loopback address this process can open; a `kubectl port-forward` elsewhere (kind)."""
    ip = pod.get("status", {}).get("podIP", "")
    if ip.startswith("127."):
        yield f"http://{ip}:{port}"
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        local = sock.getsockname()[1]
    forward = subprocess.Popen([*kube.base, "port-forward", "-n", namespace,
                                f"pod/{pod['metadata']['name']}", f"{local}:{port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for("the port-forward", lambda: _open(local), 20)
        yield f"http://127.0.0.1:{local}"
    finally:
        forward.terminate()
        forward.wait(10)


def _open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def host_address_for_pods() -> str:
    """Where a pod reaches a server this test starts: loopback on the local cluster (pods are
    processes here); on kind set AGENTGRAPH_E2E_HOST_ADDRESS to the Docker network's gateway."""
    return os.environ.get("AGENTGRAPH_E2E_HOST_ADDRESS", "127.0.0.1")


# ------------------------------------------------------------- helpers shared by test modules


def apply(kube: Kube, namespace: str, *docs: dict[str, Any]) -> None:
    kube("apply", "-n", namespace, "--server-side", "--field-manager=e2e", "-f", "-",
         stdin=yaml.safe_dump_all(docs))


def ready(kube: Kube, namespace: str, name: str) -> bool:
    obj = kube.json("get", "agentgraphs.agentgraph.dev", name, "-n", namespace)
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in obj.get("status", {}).get("conditions", []))


def pods(kube: Kube, namespace: str, selector: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kube.json("get", "pods", "-n", namespace, "-l",
                                            selector)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def gateway(kube: Kube, namespace: str, graph: str) -> dict[str, Any]:
    found = pods(kube, namespace, f"agentgraph.dev/graph={graph},"
                                  "agentgraph.dev/component=gateway")
    assert found, f"no gateway pod for {graph}"
    return found[0]
