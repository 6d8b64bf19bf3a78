"""The local cluster's pod runner: what a kubelet would do for AgentGraph's pods on kwok nodes.

kwok simulates nodes but runs no containers. This process watches the pods the operator creates
(label ``agentgraph.dev/component``) once kwok has bound them and given them an IP in
127.1.0.0/16, and starts each one's container command as a local process listening on that IP
(every 127.x address is loopback on Linux), with the pod's environment resolved as a kubelet
resolves it (values, fieldRef, configMapKeyRef, secretKeyRef, the API server's address) and, when
the pod mounts one, a service-account token made by the TokenRequest API for that pod. It probes
the pod's readiness and liveness endpoints and writes the Ready condition; a process that dies
turns its pod NotReady and is restarted with back-off; a deleted pod's process gets SIGTERM, then
SIGKILL after the grace period.

It is the only emulated part of the local cluster. Pods it cannot run (an image other than the
AgentGraph runtime, whose command is ``agentgraph``), and pods in namespaces labelled
``agentgraph.dev/pod-runner=ready-only`` (benchmarks with hundreds of graphs), are marked Ready
without a process, as kwok marks every other pod.

Run by `e2e/cluster.py up`; stopped (with every process it started) by `down`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

log = logging.getLogger("podrunner")
COMPONENT = "agentgraph.dev/component"
RUNNER_LABEL = "agentgraph.dev/pod-runner"
READY_ONLY = "ready-only"
IMAGE = "agentgraph-runtime"  # the repository name of the image we can run here
MAX_PROCESSES = 150  # this machine's limit; pods past it stay not Ready, with a reason
BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 20.0)
STRATEGIC = "application/strategic-merge-patch+json"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc), to tell a reused PID apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


@dataclass
class Probe:
    path: str
    port: int
    period: float
    failures: int
    timeout: float
    initial_delay: float = 0.0

    @staticmethod
    def of(spec: dict[str, Any] | None, ports: dict[str, int]) -> Probe | None:
        if not spec or "httpGet" not in spec:
            return None
        get = spec["httpGet"]
        port = get["port"]
        return Probe(path=get.get("path", "/"),
                     port=ports[port] if isinstance(port, str) else int(port),
                     period=float(spec.get("periodSeconds", 10)),
                     failures=int(spec.get("failureThreshold", 3)),
                     timeout=float(spec.get("timeoutSeconds", 1)),
                     initial_delay=float(spec.get("initialDelaySeconds", 0)))


async def http_ok(ip: str, probe: Probe) -> bool:
    """One HTTP GET, as the kubelet's prober does it: 200-399 is success."""
    try:
        async with asyncio.timeout(probe.timeout):
            reader, writer = await asyncio.open_connection(ip, probe.port)
            writer.write(f"GET {probe.path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n"
                         .encode())
            await writer.drain()
            line = await reader.readline()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        parts = line.split()
        return len(parts) >= 2 and 200 <= int(parts[1]) < 400
    except (OSError, TimeoutError, ValueError):
        return False


@dataclass
class PodProcess:
    namespace: str
    name: str
    uid: str
    ip: str
    pod: dict[str, Any]
    folder: Path
    proc: asyncio.subprocess.Process | None = None
    started: int | None = None
    restarts: int = 0
    ready: bool | None = None
    stopping: bool = False
    task: asyncio.Task[None] | None = None
    exits: list[int] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class Runner:
    def __init__(self, kubeconfig: str, state: Path, agentgraph: str) -> None:
        config.load_kube_config(kubeconfig)
        self.api = client.ApiClient()
        self.core = client.CoreV1Api(self.api)
        self.server = self.api.configuration.host
        self.ca = self.api.configuration.ssl_ca_cert
        self.state = state
        self.agentgraph = agentgraph
        self.pods: dict[str, PodProcess] = {}
        self.namespaces: dict[str, tuple[float, dict[str, str]]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.stop = threading.Event()
        self.stopping: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------------------ watch
    def _watch(self) -> None:
        """List, then watch every pod; relist when the watch breaks (thread)."""
        assert self.loop is not None
        while not self.stop.is_set():
            try:
                listed = self.core.list_pod_for_all_namespaces(label_selector=COMPONENT)
                for item in listed.items:
                    self._emit("ADDED", self.api.sanitize_for_serialization(item))
                version = listed.metadata.resource_version
                stream = watch.Watch().stream(
                    self.core.list_pod_for_all_namespaces, label_selector=COMPONENT,
                    resource_version=version, timeout_seconds=240)
                for event in stream:
                    if self.stop.is_set():
                        return
                    obj = event["raw_object"] if "raw_object" in event else \
                        self.api.sanitize_for_serialization(event["object"])
                    self._emit(event["type"], obj)
            except Exception as e:  # the API server restarting, a 410: list again
                log.warning("pod watch: %s; listing again", e)
                time.sleep(1)

    def _emit(self, kind: str, pod: dict[str, Any]) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, pod))

    # --------------------------------------------------------------------------- decisions
    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.state.mkdir(parents=True, exist_ok=True)
        self._reap_leftovers()
        threading.Thread(target=self._watch, daemon=True).start()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, stop.set)
        consumer = asyncio.create_task(self._consume())
        await stop.wait()
        self.stop.set()
        consumer.cancel()
        await asyncio.gather(*(self._stop(p, grace=5) for p in list(self.pods.values())))
        self._save()

    async def _consume(self) -> None:
        while True:
            kind, pod = await self.events.get()
            try:
                await self._handle(kind, pod)
            except Exception:
                log.exception("handling %s %s", kind, pod.get("metadata", {}).get("name"))

    async def _handle(self, kind: str, pod: dict[str, Any]) -> None:
        meta, spec, status = pod["metadata"], pod.get("spec", {}), pod.get("status", {})
        key = f"{meta['namespace']}/{meta['name']}"
        running = self.pods.get(key)
        if running is not None and running.uid != meta.get("uid"):
            await self._stop(running, grace=0)  # the name was reused by a new pod
            running = None
        if kind == "DELETED" or meta.get("deletionTimestamp"):
            if running is not None and not running.stopping:
                grace = spec.get("terminationGracePeriodSeconds", 30)
                stopping = asyncio.create_task(self._stop(running, grace=float(grace)))
                self.stopping.add(stopping)
                stopping.add_done_callback(self.stopping.discard)
            return
        ip = status.get("podIP")
        if running is not None or not ip or not ip.startswith("127.") or not spec.get("nodeName"):
            return
        if status.get("phase") != "Running":
            return
        if not await asyncio.to_thread(self._runnable, pod):
            # By what the pod says, not by what was sent: under load a status write can be
            # overtaken by kwok's own (seen at 1,000 pods: a few stayed ContainerCreating).
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in status.get("conditions", []))
            if not ready:
                await asyncio.to_thread(self._patch_ready, pod, True, "NotRunHere")
            return
        if len(self.pods) >= MAX_PROCESSES:
            log.error("%s: %d processes already run here; not starting it", key, MAX_PROCESSES)
            await asyncio.to_thread(self._patch_ready, pod, False, "RunnerFull")
            return
        process = PodProcess(meta["namespace"], meta["name"], meta["uid"], ip, pod,
                             self.state / meta["namespace"] / meta["name"])
        self.pods[key] = process
        process.task = asyncio.create_task(self._supervise(process))

    def _runnable(self, pod: dict[str, Any]) -> bool:
        namespace = pod["metadata"]["namespace"]
        seen, labels = self.namespaces.get(namespace, (0.0, {}))
        if time.monotonic() - seen > 10:
            try:
                ns = self.core.read_namespace(namespace)
                labels = dict(ns.metadata.labels or {})
            except client.ApiException:
                labels = {}
            self.namespaces[namespace] = (time.monotonic(), labels)
        if labels.get(RUNNER_LABEL) == READY_ONLY:
            return False
        containers = pod["spec"].get("containers", [])
        return (len(containers) == 1 and containers[0].get("command") == ["agentgraph"]
                and IMAGE in containers[0].get("image", ""))

    # ----------------------------------------------------------------------------- processes
    async def _supervise(self, p: PodProcess) -> None:
        container = p.pod["spec"]["containers"][0]
        ports = {c["name"]: int(c["containerPort"]) for c in container.get("ports", [])
                 if "name" in c}
        readiness = Probe.of(container.get("readinessProbe"), ports)
        liveness = Probe.of(container.get("livenessProbe"), ports)
        failures = 0
        while not p.stopping:
            await self._free_address(p)
            try:
                env = await asyncio.to_thread(self._env, p, container)
            except Exception as e:  # a missing ConfigMap key: a kubelet reports and retries
                log.warning("%s: cannot build the environment: %s", p.key, e)
                await asyncio.to_thread(self._patch_ready, p.pod, False,
                                        "CreateContainerConfigError", str(e))
                await asyncio.sleep(BACKOFF_S[min(failures, len(BACKOFF_S) - 1)])
                failures += 1
                continue
            p.folder.mkdir(parents=True, exist_ok=True)
            out = (p.folder / "container.log").open("ab")
            p.proc = await asyncio.create_subprocess_exec(
                self.agentgraph, *container.get("args", []), env=env, cwd=str(p.folder),
                stdout=out, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
            out.close()
            p.started = start_time(p.proc.pid)
            self._save()
            log.info("%s: started pid %d on %s (restart %d)", p.key, p.proc.pid, p.ip,
                     p.restarts)
            probing = asyncio.create_task(self._probe(p, readiness, liveness))
            code = await p.proc.wait()
            probing.cancel()
            p.exits.append(code)
            if p.stopping:
                break
            log.warning("%s: exited with %d; see %s", p.key, code, p.folder / "container.log")
            p.restarts += 1
            await asyncio.to_thread(self._patch_ready, p.pod, False, "ContainerExited",
                                    f"exit code {code}", p.restarts, code)
            await asyncio.sleep(BACKOFF_S[min(p.restarts - 1, len(BACKOFF_S) - 1)])

    async def _probe(self, p: PodProcess, readiness: Probe | None, liveness: Probe | None
                     ) -> None:
        loop = asyncio.get_running_loop()
        next_ready = loop.time() + (readiness.initial_delay if readiness else 0)
        next_live = loop.time() + (liveness.initial_delay if liveness else 0) + 1
        ready_fail = live_fail = 0
        if readiness is None:
            await asyncio.to_thread(self._patch_ready, p.pod, True, "Started", "",
                                    p.restarts)
            p.ready = True
        while p.proc is not None and p.proc.returncode is None:
            if readiness is not None and loop.time() >= next_ready:
                ok = await http_ok(p.ip, readiness)
                ready_fail = 0 if ok else ready_fail + 1
                wanted = True if ok else (False if ready_fail >= readiness.failures or
                                          not p.ready else p.ready)
                if wanted != p.ready and not p.stopping:
                    p.ready = wanted
                    await asyncio.to_thread(self._patch_ready, p.pod, wanted,
                                            "ProbeSucceeded" if wanted else "ProbeFailed",
                                            "", p.restarts)
                # A pod not yet ready is probed often; a ready one at its period.
                next_ready = loop.time() + (readiness.period if p.ready else 0.25)
            if liveness is not None and p.ready and loop.time() >= next_live:
                live_fail = 0 if await http_ok(p.ip, liveness) else live_fail + 1
                if live_fail >= liveness.failures and p.proc.returncode is None:
                    log.warning("%s: liveness failed %d times; killing", p.key, live_fail)
                    self._signal(p, signal.SIGKILL)
                next_live = loop.time() + liveness.period
            await asyncio.sleep(0.1)
        if p.ready and not p.stopping:
            p.ready = False

    async def _free_address(self, p: PodProcess) -> None:
        """kwok reuses a deleted pod's IP at once; a process still draining there goes first."""
        for other in list(self.pods.values()):
            if other is not p and other.ip == p.ip and other.proc is not None \
                    and other.proc.returncode is None:
                log.info("%s: %s still holds %s; killing it", p.key, other.key, p.ip)
                self._signal(other, signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(other.proc.wait(), 5)

    def _signal(self, p: PodProcess, sig: int) -> None:
        if p.proc is None or p.proc.returncode is not None:
            return
        if p.started is not None and start_time(p.proc.pid) != p.started:
            return  # not our process any more
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.proc.pid, sig)

    async def _stop(self, p: PodProcess, grace: float) -> None:
        p.stopping = True
        if p.proc is not None and p.proc.returncode is None:
            self._signal(p, signal.SIGTERM if grace > 0 else signal.SIGKILL)
            try:
                await asyncio.wait_for(p.proc.wait(), max(grace, 0.1))
            except TimeoutError:
                self._signal(p, signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(p.proc.wait(), 5)
        if p.task is not None:
            p.task.cancel()
        if self.pods.get(p.key) is p:
            del self.pods[p.key]
        self._save()

    def _save(self) -> None:
        """PIDs with start times, so a runner restarted after a crash stops what it left."""
        table = {p.key: [p.proc.pid, p.started] for p in self.pods.values()
                 if p.proc is not None and p.proc.returncode is None}
        (self.state / "processes.json").write_text(json.dumps(table))

    def _reap_leftovers(self) -> None:
        path = self.state / "processes.json"
        if not path.exists():
            return
        for key, (pid, started) in json.loads(path.read_text()).items():
            if started is not None and start_time(pid) == started:
                log.info("stopping %s (pid %d) left by an earlier runner", key, pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
        path.unlink()

    # ------------------------------------------------------------------ kubelet's bookkeeping
    def _env(self, p: PodProcess, container: dict[str, Any]) -> dict[str, str]:
        pod = p.pod
        meta, spec = pod["metadata"], pod["spec"]
        host, _, port = self.server.removeprefix("https://").partition(":")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(p.folder),
               "PYTHONUNBUFFERED": "1", "KUBERNETES_SERVICE_HOST": host,
               "KUBERNETES_SERVICE_PORT": port or "443",
               # every pod shares this host's network: each listens on its own pod IP
               "AGENTGRAPH_LISTEN_HOST": p.ip}
        fields = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"],
                  "metadata.uid": meta["uid"], "status.podIP": p.ip,
                  "spec.nodeName": spec.get("nodeName", ""),
                  "spec.serviceAccountName": spec.get("serviceAccountName", "default")}
        for item in container.get("env", []):
            source = item.get("valueFrom")
            if source is None:
                env[item["name"]] = item.get("value", "")
            elif "fieldRef" in source:
                env[item["name"]] = fields[source["fieldRef"]["fieldPath"]]
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                cm = self.core.read_namespaced_config_map(ref["name"], meta["namespace"])
                env[item["name"]] = (cm.data or {})[ref["key"]]
            elif "secretKeyRef" in source:
                import base64

                ref = source["secretKeyRef"]
                secret = self.core.read_namespaced_secret(ref["name"], meta["namespace"])
                env[item["name"]] = base64.b64decode((secret.data or {})[ref["key"]]).decode()
        if spec.get("automountServiceAccountToken", True):
            env["AGENTGRAPH_SERVICEACCOUNT_DIR"] = str(self._token(p))
        return env

    def _token(self, p: PodProcess) -> Path:
        """A bound token for the pod's service account, as the kubelet projects it."""
        meta, spec = p.pod["metadata"], p.pod["spec"]
        account = spec.get("serviceAccountName") or "default"
        request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=[], expiration_seconds=3600,
            bound_object_ref=client.V1BoundObjectReference(
                kind="Pod", api_version="v1", name=meta["name"], uid=meta["uid"])))
        made = self.core.create_namespaced_service_account_token(account, meta["namespace"],
                                                                 request)
        folder = p.folder / "serviceaccount"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "token").write_text(made.status.token)
        (folder / "namespace").write_text(meta["namespace"])
        (folder / "ca.crt").write_bytes(Path(self.ca).read_bytes())
        return folder

    def _patch_ready(self, pod: dict[str, Any], ready: bool, reason: str, message: str = "",
                     restarts: int = 0, exit_code: int | None = None) -> None:
        meta = pod["metadata"]
        at = now()
        value = "True" if ready else "False"
        container = pod["spec"]["containers"][0]
        state: dict[str, Any] = {"running": {"startedAt": at}}
        if exit_code is not None:
            state = {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
        body = {"status": {
            "conditions": [
                {"type": "Ready", "status": value, "reason": reason, "message": message,
                 "lastTransitionTime": at},
                {"type": "ContainersReady", "status": value, "reason": reason,
                 "lastTransitionTime": at}],
            "containerStatuses": [{
                "name": container["name"], "image": container["image"], "ready": ready,
                "started": exit_code is None, "restartCount": restarts, "state": state,
                **({"lastState": {"terminated": {"exitCode": exit_code, "reason": "Error",
                                                 "finishedAt": at}}}
                   if exit_code is not None else {}),
                "imageID": "", "containerID": f"agentgraph-podrunner://{meta['uid']}"}],
        }}
        try:
            self.core.patch_namespaced_pod_status(meta["name"], meta["namespace"], body,
                                                  _content_type=STRATEGIC)
        except client.ApiException as e:
            if e.status != 404:  # gone meanwhile: nothing to report
                raise


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kubeconfig", required=True)
    ap.add_argument("--state", required=True, help="folder for pods' logs, tokens, PIDs")
    ap.add_argument("--agentgraph", default=str(Path(sys.executable).parent / "agentgraph"),
                    help="the agentgraph command to run for the runtime image")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    runner = Runner(args.kubeconfig, Path(args.state), args.agentgraph)
    asyncio.run(runner.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
