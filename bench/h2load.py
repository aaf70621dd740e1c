"""Running h2load (nghttp2's HTTP/2 load generator) and reading its report as a ``WrkResult``.

h2load prints req/s and counts but no percentiles, so each run writes ``--log-file`` (one line
per request: start time, status, microseconds to the end of the response) and p50/p99 are
taken from it.  Non-2xx/3xx statuses and failed or errored requests count as errors.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

from wrk import WrkResult

# The HTTP/2 scenarios' shape: few connections, several streams in flight on each, as a
# browser loading a page of modules does.
CLIENTS = 8
STREAMS = 10

_RPS = re.compile(r"^finished in [\d.]+\w+, ([\d.]+) req/s", re.MULTILINE)
_REQUESTS = re.compile(
    r"^requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout",
    re.MULTILINE,
)
_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.MULTILINE)
_PROTOCOL = re.compile(r"^Application protocol: (\S+)", re.MULTILINE)


def run(
    h2load: str, url: str, threads: int, duration: int, headers: tuple[str, ...] = ()
) -> WrkResult:
    """``h2load -c CLIENTS -m STREAMS -t threads -D duration`` against ``url``."""
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        log = Path(tmp) / "requests.tsv"
        argv = [h2load, "-c", str(CLIENTS), "-m", str(STREAMS), "-t", str(threads)]
        argv += ["-D", str(duration), "--log-file", str(log)]
        for header in headers:
            argv += ["-H", header]
        done = subprocess.run([*argv, url], capture_output=True, text=True, timeout=duration + 60)
        if done.returncode != 0:
            raise RuntimeError(f"h2load exited {done.returncode}: {done.stderr.strip()[-500:]}")
        return parse(done.stdout, log.read_text() if log.exists() else "")


def parse(report: str, log: str) -> WrkResult:
    protocol = _PROTOCOL.search(report)
    if protocol is None or protocol.group(1) != "h2":
        raise RuntimeError(f"h2load did not negotiate h2:\n{report[-800:]}")
    rps, requests, status = _RPS.search(report), _REQUESTS.search(report), _STATUS.search(report)
    if rps is None or requests is None or status is None:
        raise RuntimeError(f"cannot read h2load's report:\n{report[-800:]}")
    # "failed" already includes the errored and timed-out requests.
    total, _, failed, _, timeouts = (int(g) for g in requests.groups())
    non_2xx = int(status.group(3)) + int(status.group(4))
    latencies = sorted(int(line.split("\t")[2]) for line in log.splitlines() if line.strip())
    return WrkResult(
        requests_per_sec=float(rps.group(1)),
        p50_ms=_percentile(latencies, 0.50) / 1000,
        p99_ms=_percentile(latencies, 0.99) / 1000,
        requests=total,
        read_errors=max(0, failed - timeouts),
        timeouts=timeouts,
        non_2xx=non_2xx,
    )


def _percentile(values: list[int], q: float) -> float:
    if not values:
        return 0.0
    return float(values[min(len(values) - 1, int(q * len(values)))])
