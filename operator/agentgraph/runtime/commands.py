"""`agentgraph worker`, `agentgraph gateway` and `agentgraph loadgen`: the runtime's entry points
(one image, one entry point per role; the step kind comes from the worker's configuration)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import pydantic

from agentgraph.api.runtime import GATEWAY_PORT, HTTP_PORT, METRICS_PORT, WORKER_CONFIG_ENV
from agentgraph.api.runtime import WorkerConfig as Config

LISTEN_ENV = "AGENTGRAPH_LISTEN_HOST"  # the address to bind; default all interfaces


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    w = sub.add_parser("worker", help="run one step phase's reference worker (in a step pod)")
    w.add_argument("--kind", help="the step kind; checked against the configuration")
    w.add_argument("--phase", help="run, prefill or decode; checked against the configuration")
    w.add_argument("--config", help=f"WorkerConfig JSON file (default: ${WORKER_CONFIG_ENV})")
    w.add_argument("--host", default=None, help=f"address to listen on (default ${LISTEN_ENV}, "
                   "else 0.0.0.0)")
    w.add_argument("--port", type=int, default=HTTP_PORT)
    w.add_argument("--metrics-port", type=int, default=METRICS_PORT)
    w.set_defaults(func=worker)
    g = sub.add_parser("gateway", help="run an AgentGraph's gateway")
    g.add_argument("--graph", help="the AgentGraph (in a cluster: its ConfigMap and pods are "
                   "watched)")
    g.add_argument("--namespace", help="default $POD_NAMESPACE, else the service account's")
    g.add_argument("--config", help="a RuntimeGraph JSON file instead of the cluster (tests, "
                   "benchmarks)")
    g.add_argument("--endpoint", action="append", default=[], metavar="STEP[/PHASE]=HOST:PORT",
                   help="fixed endpoints with --config (repeat; comma-separate replicas)")
    g.add_argument("--host", default=None)
    g.add_argument("--port", type=int, default=GATEWAY_PORT)
    g.add_argument("--metrics-port", type=int, default=METRICS_PORT)
    g.set_defaults(func=gateway)
    lg = sub.add_parser("loadgen", help="send load to a gateway on this machine (open loop)")
    lg.add_argument("url", help="e.g. http://127.1.0.7:8080/v1/invoke (loopback only)")
    lg.add_argument("--rate", type=float, help="requests per second (open loop)")
    lg.add_argument("--stages", help="stepped rates, RATE:SECONDS[,RATE:SECONDS...]")
    lg.add_argument("--concurrency", type=int, default=0,
                    help="a closed loop of this many senders instead (saturation)")
    lg.add_argument("--duration", type=float, default=10.0, help="seconds (default 10)")
    lg.add_argument("--requests", type=int, help="stop after this many requests")
    lg.add_argument("--body", default='{"text": "Will it rain in Paris tomorrow?"}',
                    help="the JSON request body")
    lg.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    lg.add_argument("--json", help="also write the per-stage summary here")
    lg.set_defaults(func=loadgen)


def _host(args: argparse.Namespace) -> str:
    return str(args.host or os.environ.get(LISTEN_ENV) or "0.0.0.0")


def load_worker_config(path: str | None) -> Config:
    raw = Path(path).read_text() if path else os.environ.get(WORKER_CONFIG_ENV)
    if not raw:
        raise ValueError(f"no worker configuration: set ${WORKER_CONFIG_ENV} or pass --config")
    return Config.model_validate_json(raw)


def worker(args: argparse.Namespace) -> int:
    _logging()
    try:
        config = load_worker_config(args.config)
    except (ValueError, OSError, pydantic.ValidationError) as e:
        print(f"agentgraph worker: {e}", file=sys.stderr)
        return 2
    for flag, value in (("--kind", config.kind.value), ("--phase", config.phase)):
        given = getattr(args, flag[2:])
        if given is not None and given != value:
            print(f"agentgraph worker: {flag} {given} disagrees with the configuration "
                  f"({value})", file=sys.stderr)
            return 2
    from agentgraph.runtime import http, steps
    from agentgraph.runtime import worker as serving

    backend = steps.backend(config, args.port)
    members = {m.step: steps.backend(m, args.port) for m in config.members}
    logging.getLogger("agentgraph.worker").info(
        "%s %s/%s (%s) on pool %s: %s", "EMULATOR" if backend.mode == "emulator" else "worker",
        config.step, config.phase, config.kind.value, config.pool,
        "time from the cost model" if backend.mode == "emulator" else "real work")
    if members:
        logging.getLogger("agentgraph.worker").info(
            "a shared model server: also serves %s", ", ".join(members))
    http.run(lambda: serving.serve(config, backend, _host(args), args.port,
                                   args.metrics_port, members=members))
    return 0


def gateway(args: argparse.Namespace) -> int:
    _logging()
    from agentgraph.runtime import gateway as gw
    from agentgraph.runtime import http

    if args.config is None and args.graph is None:
        print("agentgraph gateway: give --graph NAME (in a cluster) or --config FILE",
              file=sys.stderr)
        return 2
    http.run(lambda: gw.serve(_host(args), args.port, args.metrics_port, args.graph,
                              args.namespace, args.config, args.endpoint))
    return 0


def loadgen(args: argparse.Namespace) -> int:
    import json

    from agentgraph.runtime import http
    from agentgraph.runtime import loadgen as lg

    try:
        body = json.loads(args.body)
        lg.check_loopback(args.url)
        if args.stages:
            stages = lg.parse_stages(args.stages)
        elif args.rate is not None and args.concurrency <= 0:
            stages = lg.parse_stages(f"{args.rate}:{args.duration}")
        elif args.concurrency > 0:
            stages = []
        else:
            raise ValueError("give --rate, --stages or --concurrency")
        if args.duration <= 0 or args.timeout <= 0 or (args.requests is not None
                                                       and args.requests < 1):
            raise ValueError("--duration, --timeout and --requests must be positive")
    except ValueError as e:
        print(f"agentgraph loadgen: {e}", file=sys.stderr)
        return 2
    report = http.run(lambda: lg.run(args.url, body, stages, args.concurrency, args.duration,
                                     args.requests, args.timeout))
    print(lg.format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(lg.summary(report), indent=2, default=str))
    return 0 if report.samples and all(s.status == 200 for s in report.samples) else 1
