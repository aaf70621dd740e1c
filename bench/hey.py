"""Running hey (Debian's ``hey``) at a fixed request rate and reading its report as a
``wrk.WrkResult``: the latency of a proxy that is not saturated ("p99 at half load").

wrk has no rate limit; hey's ``-q`` caps each of its ``-c`` workers at a rate, so
``-c C -q R/C`` offers R requests/s in total.  hey skips certificate verification (it sets
``InsecureSkipVerify``), which is fine here: both proxies serve the same certificate.
"""

from __future__ import annotations

import re
import subprocess
from urllib.parse import urlsplit

from wrk import WrkResult

_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_PERCENTILE = re.compile(r"^\s*(\d+)% in ([\d.]+) secs", re.MULTILINE)
_STATUS = re.compile(r"^\s*\[(\d{3})\]\s+(\d+) responses", re.MULTILINE)
_ERRORS = re.compile(r"^\s*\[(\d+)\]\s+\S", re.MULTILINE)


def parse(output: str) -> WrkResult:
    """hey's summary; ValueError when it has no Requests/sec line (hey failed)."""
    rps = _RPS.search(output)
    if rps is None:
        raise ValueError("no 'Requests/sec' line in hey's output")
    percentiles = {int(p): float(s) * 1000 for p, s in _PERCENTILE.findall(output)}
    statuses = {int(code): int(n) for code, n in _STATUS.findall(output)}
    _, _, error_part = output.partition("Error distribution:")
    errors = sum(int(n) for n in _ERRORS.findall(error_part))
    return WrkResult(
        requests_per_sec=float(rps.group(1)),
        p50_ms=percentiles.get(50, 0.0),
        p99_ms=percentiles.get(99, 0.0),
        requests=sum(statuses.values()),
        read_errors=errors,
        non_2xx=sum(n for code, n in statuses.items() if code >= 400),
    )


def run(hey: str, url: str, connections: int, rate: float, duration: int) -> WrkResult:
    """``rate`` requests/s in total over ``connections`` keep-alive connections."""
    # -host: hey makes the TLS server name of the Host it sends, which by default carries the
    # port ("127.0.0.1:8443"), a name matching no certificate (the gateway answers 421).
    host = urlsplit(url).hostname or ""
    argv = [hey, "-z", f"{duration}s", "-c", str(connections), "-q", f"{rate / connections:.3f}"]
    argv += ["-host", host]
    done = subprocess.run(
        [*argv, url],
        capture_output=True,
        text=True,
        timeout=duration + 60,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode != 0:
        raise RuntimeError(f"hey failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return parse(done.stdout)
