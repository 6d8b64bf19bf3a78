"""Load in the background for the e2e suite and the benchmarks: agentgraph loadgen's engine in
a thread, an open loop in 2 s stages at a rate that may change while it runs (and, with
``noise``, is drawn anew each stage within ±noise of it). Stops when asked; bounded by that."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Iterator

STAGE_S = 2.0


class Load:
    def __init__(self, url: str, rate: float = 0.0, noise: float = 0.0, seed: int = 7) -> None:
        self.url, self.rate, self.noise = url, rate, noise
        self.stop = threading.Event()
        self.samples: list[tuple[float, float, int]] = []  # (sent at, latency, status)
        self.random = random.Random(seed)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from agentgraph.runtime import http, loadgen

        async def main() -> None:
            client = http.Client()
            while not self.stop.is_set():
                if self.rate <= 0:
                    await asyncio.sleep(0.2)
                    continue
                rate = self.rate * (1 + self.noise * (2 * self.random.random() - 1))
                report = await loadgen.run(self.url, {"n": 1}, [loadgen.Stage(rate, STAGE_S)],
                                           timeout=10, client=client)
                base = time.monotonic() - report.elapsed
                self.samples += [(base + s.sent_at, s.latency, s.status)
                                 for s in report.samples]
            client.close()

        http.run(main)

    def p95_since(self, since: float) -> float:
        """p95 of the requests sent since ``since`` (monotonic), a failed one counting as
        infinitely slow."""
        from agentgraph.runtime import loadgen

        ok = [lat for at, lat, code in self.samples if at >= since and code == 200]
        errors = sum(1 for at, _, code in self.samples if at >= since and code != 200)
        return loadgen.percentile(ok + [float("inf")] * errors, 95)


@contextlib.contextmanager
def load(url: str, rate: float = 0.0, noise: float = 0.0) -> Iterator[Load]:
    driver = Load(url, rate, noise)
    driver.thread.start()
    try:
        yield driver
    finally:
        driver.stop.set()
        driver.thread.join(30)
