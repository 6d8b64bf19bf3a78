"""e2e fixtures: a real control plane reached through KUBECONFIG (make cluster, or kind)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

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
