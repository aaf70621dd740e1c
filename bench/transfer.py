"""Large streamed transfers through a proxy, with the proxy's resident memory sampled meanwhile.

curl does the transfer when installed (C, so the client is not the bottleneck on 2 cores);
httpx is the fallback.  Neither side ever holds the whole body: the download goes to
/dev/null, the upload is generated chunk by chunk into curl's stdin (``-T -`` streams it with
chunked framing; ``--data-binary @-`` would read it all into memory first).
"""

from __future__ import annotations

import contextlib
import json
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from procstat import RssSampler

CHUNK = b"u" * (1 << 20)
MIB = 1 << 20


@dataclass(frozen=True)
class TransferResult:
    size: int  # bytes asked for
    moved: int  # bytes the receiving end counted
    seconds: float
    rss_baseline: int | None = None
    rss_peak: int | None = None
    rss_samples: int = 0
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None and self.moved == self.size

    @property
    def mib_per_s(self) -> float:
        return self.moved / MIB / self.seconds if self.seconds > 0 else 0.0

    @property
    def rss_growth(self) -> int | None:
        if self.rss_baseline is None or self.rss_peak is None:
            return None
        return self.rss_peak - self.rss_baseline


def _generate(size: int) -> Iterator[bytes]:
    left = size
    while left > 0:
        part = CHUNK if left >= len(CHUNK) else CHUNK[:left]
        left -= len(part)
        yield part


def _curl_base(curl: str, ca_file: Path, timeout: float) -> list[str]:
    # --http1.1: curl would pick h2 by ALPN on the gateway; the transfers compare HTTP/1.1.
    return [curl, "-sS", "--http1.1", "--cacert", str(ca_file), "--max-time", str(int(timeout))]


def _curl_download(curl: str, url: str, ca_file: Path, timeout: float) -> tuple[int, float]:
    argv = _curl_base(curl, ca_file, timeout)
    argv += ["-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 30)
    if done.returncode != 0:
        raise RuntimeError(f"curl exited {done.returncode}: {done.stderr.strip()}")
    status, size, seconds = done.stdout.split()
    if status != "200":
        raise RuntimeError(f"status {status}")
    return int(size), float(seconds)


def _curl_upload(
    curl: str, url: str, ca_file: Path, size: int, timeout: float
) -> tuple[int, float]:
    argv = _curl_base(curl, ca_file, timeout)
    # "Expect:" drops curl's 100-continue wait; the body goes chunked since its size is unknown.
    argv += ["-X", "POST", "-T", "-", "-H", "Expect:"]
    argv += ["-H", "Content-Type: application/octet-stream"]
    argv += ["-w", "\n%{http_code} %{time_total}", url]
    # Output goes to files, not pipes: communicate() would close the stdin we are feeding.
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err)
        stdin = proc.stdin
        assert stdin is not None

        def feed() -> None:
            try:
                with stdin:
                    for part in _generate(size):
                        stdin.write(part)
            except (BrokenPipeError, ValueError):
                pass  # curl gave up; its exit status and stderr say why

        writer = threading.Thread(target=feed, name="upload-feed", daemon=True)
        writer.start()
        try:
            proc.wait(timeout=timeout + 30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            writer.join(timeout=10)
        out.seek(0)
        err.seek(0)
        output, error = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"curl exited {proc.returncode}: {error.strip()}")
    body, _, trailer = output.rpartition("\n")
    status, seconds = trailer.split()
    if status != "200":
        raise RuntimeError(f"status {status}: {body[:200]}")
    return int(json.loads(body)["received"]), float(seconds)


def _httpx_download(url: str, ca_file: Path, timeout: float) -> tuple[int, float]:
    context = ssl.create_default_context(cafile=str(ca_file))
    started = time.monotonic()
    moved = 0
    with httpx.Client(verify=context, timeout=timeout) as client:
        with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise RuntimeError(f"status {response.status_code}")
            for data in response.iter_raw(1 << 20):
                moved += len(data)
    return moved, time.monotonic() - started


def _httpx_upload(url: str, ca_file: Path, size: int, timeout: float) -> tuple[int, float]:
    context = ssl.create_default_context(cafile=str(ca_file))
    started = time.monotonic()
    with httpx.Client(verify=context, timeout=timeout) as client:
        headers = {"content-type": "application/octet-stream"}
        response = client.post(url, content=_generate(size), headers=headers)
    if response.status_code != 200:
        raise RuntimeError(f"status {response.status_code}: {response.text[:200]}")
    return int(response.json()["received"]), time.monotonic() - started


def transfer(
    direction: str,
    base_url: str,
    size: int,
    ca_file: Path,
    curl: str | None,
    sample_pid: int | None = None,
) -> TransferResult:
    """Download ``size`` bytes from ``base_url``/bytes or upload them to ``base_url``/upload,
    sampling the VmRSS of ``sample_pid`` every 100 ms meanwhile when it is given."""
    timeout = 600.0  # 1 GiB at under 2 MiB/s would be a finding in itself
    sampler = RssSampler(sample_pid) if sample_pid is not None else None
    with sampler if sampler is not None else contextlib.nullcontext():
        try:
            if direction == "download":
                url = f"{base_url}/bytes?n={size}"
                if curl:
                    moved, seconds = _curl_download(curl, url, ca_file, timeout)
                else:
                    moved, seconds = _httpx_download(url, ca_file, timeout)
            else:
                url = f"{base_url}/upload"
                if curl:
                    moved, seconds = _curl_upload(curl, url, ca_file, size, timeout)
                else:
                    moved, seconds = _httpx_upload(url, ca_file, size, timeout)
            problem = None if moved == size else f"moved {moved} of {size} bytes"
        except (
            RuntimeError,
            ValueError,
            OSError,
            httpx.HTTPError,
            subprocess.SubprocessError,
        ) as exc:
            moved, seconds, problem = 0, 0.0, str(exc)
    return TransferResult(
        size=size,
        moved=moved,
        seconds=seconds,
        rss_baseline=sampler.baseline if sampler else None,
        rss_peak=sampler.peak if sampler else None,
        rss_samples=sampler.samples if sampler else 0,
        problem=problem,
    )
