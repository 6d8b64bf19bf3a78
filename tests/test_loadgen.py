"""The load generator: open loop on schedule whatever the answers do, stepped rates, bounds,
loopback only, a summary that counts errors by code."""

from __future__ import annotations

import asyncio
import math

import pytest

from agentgraph import cli
from agentgraph.runtime import http, loadgen


async def _server(delay: float, fail_every: int = 0) -> tuple[http.Server, str, list[int]]:
    seen: list[int] = []

    async def answer(_: http.Request) -> http.Response:
        seen.append(1)
        await asyncio.sleep(delay)
        if fail_every and len(seen) % fail_every == 0:
            return http.Response.json({"error": {"reason": "nope"}}, 503)
        return http.Response.json({"ok": True})

    server = http.Server({("POST", "/v1/invoke"): answer})
    port = await server.listen("127.0.0.1", 0)
    return server, f"http://127.0.0.1:{port}/v1/invoke", seen


def test_open_loop_keeps_its_schedule_when_answers_are_slow() -> None:
    async def main() -> None:
        server, url, seen = await _server(delay=0.5)
        report = await loadgen.run(url, {}, [loadgen.Stage(40, 0.5)])
        await server.shutdown(1)
        sent = sorted(s.sent_at for s in report.samples)
        assert len(sent) == 20 == len(seen)
        assert sent[-1] < 0.6  # all sent in the first half second, before any answer came
        assert all(s.status == 200 and s.latency >= 0.5 for s in report.samples)

    asyncio.run(main())


def test_stages_and_the_summary() -> None:
    async def main() -> None:
        server, url, _ = await _server(delay=0.0, fail_every=4)
        report = await loadgen.run(url, {}, loadgen.parse_stages("20:0.5,40:0.5"))
        await server.shutdown(1)
        rows = {r["stage"]: r for r in loadgen.summary(report)}
        assert (rows["1"]["sent"], rows["2"]["sent"], rows["all"]["sent"]) == (10, 20, 30)
        assert rows["all"]["errors"] == {"503": 7} and rows["all"]["ok"] == 23
        assert rows["2"]["rate"] == pytest.approx(40, rel=0.15)
        assert "503: 7" in loadgen.format_table(report)

    asyncio.run(main())


def test_a_closed_loop_stops_at_its_count() -> None:
    async def main() -> None:
        server, url, seen = await _server(delay=0.0)
        report = await loadgen.run(url, {}, concurrency=4, duration=5, max_requests=25)
        await server.shutdown(1)
        assert len(report.samples) == len(seen) == 25

    asyncio.run(main())


def test_percentiles_by_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert loadgen.percentile(values, 50) == 50 and loadgen.percentile(values, 99) == 99
    assert math.isnan(loadgen.percentile([], 50))


@pytest.mark.parametrize("args, message", [
    (["http://10.1.2.3/v1/invoke", "--rate", "5"], "not a loopback address"),
    (["http://no-such-host.invalid/v1/invoke", "--rate", "5"], "cannot resolve"),
    (["http://127.0.0.1:1/v1/invoke", "--stages", "5:x"], "stage '5:x'"),
    (["http://127.0.0.1:1/v1/invoke", "--stages=-1:5"], "must be positive"),
    (["http://127.0.0.1:1/v1/invoke"], "give --rate, --stages or --concurrency"),
    (["http://127.0.0.1:1/v1/invoke", "--rate", "1", "--body", "{"], "Expecting"),
])
def test_bad_arguments_are_refused_naming_them(args: list[str], message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["loadgen", *args]) == 2
    assert message in capsys.readouterr().err
