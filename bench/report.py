"""What a benchmark run measured, and how it is shown: per-scenario tables and the summary.

The summary block is what gets pasted into an issue note, so it carries its own context: the
load parameters, the bars and their verdicts, and notes on errors, CPU use and the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
from dataclasses import dataclass, field

import wrk
from stack import REPO
from transfer import MIB, TransferResult

# The bars the gateway is held to (the acceptance criteria).
BAR_JSON = 0.5  # gateway/nginx req/s, small JSON
BAR_CACHE = 0.6  # gateway/nginx req/s, cache hits
BAR_RSS_MIB = 64  # gateway RSS growth during a streamed transfer
# The static-file scenario has no bar of its own yet: its ratio is reported only.
BARS = {"json": BAR_JSON, "cache": BAR_CACHE}


# --- the measurements -------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str  # "direct", "nginx", "gateway"
    label: str
    url: str
    proxy: list[int]  # roots of the process trees that proxy (none for direct)
    origin: list[int]  # roots of the process trees that answer
    headers: tuple[str, ...] = ()  # extra request headers ("Name: value"), wrk -H
    client: str = "wrk"  # or "h2load": HTTP/2, h2load.CLIENTS connections x STREAMS streams
    rate: float = 0.0  # client "hey": requests/s offered in total (fixed rate)


@dataclass
class Measurement:
    result: wrk.WrkResult
    # CPU in % of one core; wrk's own share matters because on 2 cores the load generator
    # competes with the servers it measures.
    proxy_cpu: float | None
    origin_cpu: float
    wrk_cpu: float
    machine_cpu: float  # % of all cores
    # Machine CPU not spent by the processes above nor on interrupts: whatever else ran
    # meanwhile (another test suite, say).  A large share means noisy numbers.
    other_cpu: float

    @property
    def rps(self) -> float:
        return self.result.requests_per_sec

    @property
    def p50_ms(self) -> float:
        return self.result.p50_ms

    @property
    def proxy_us_per_request(self) -> float | None:
        """The proxy's CPU time per request (from /proc): unlike req/s, it does not depend on
        how much CPU the origin and the load generator left it."""
        if self.proxy_cpu is None or not self.rps:
            return None
        return self.proxy_cpu / 100 / self.rps * 1e6

    @property
    def p99_ms(self) -> float:
        return self.result.p99_ms


@dataclass
class Scenario:
    key: str
    title: str
    targets: list[Target]
    runs: dict[str, list[Measurement]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    label: str = ""  # e.g. "cache not active"

    def median(self, target: str, attribute: str) -> float | None:
        """The median over the rounds of one Measurement attribute (None: not measured)."""
        runs = self.runs.get(target, [])
        values = [v for m in runs if (v := getattr(m, attribute)) is not None]
        return statistics.median(values) if values else None

    def rps(self, target: str) -> float | None:
        return self.median(target, "rps")

    def errors(self, target: str) -> int:
        return sum(m.result.errors for m in self.runs.get(target, []))

    def ratio(self, top: str, bottom: str) -> float | None:
        a, b = self.rps(top), self.rps(bottom)
        return a / b if a is not None and b else None


@dataclass
class Transfers:
    direction: str
    gateway: TransferResult
    nginx: TransferResult


def pass_fail(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def size_text(size: int) -> str:
    return f"{size / (1 << 30):g} GiB" if size >= 1 << 30 else f"{size / MIB:g} MiB"


def fmt(value: float | None, spec: str, suffix: str = "", width: int = 0) -> str:
    text = "-" if value is None else f"{value:{spec}}{suffix}"
    return text.rjust(width)


def print_table(scenario: Scenario) -> None:
    title = scenario.title + (f" [{scenario.label}]" if scenario.label else "")
    rounds = len(next(iter(scenario.runs.values()), []))
    print(f"\n{title}: medians of {rounds} round(s); CPU in % of one core")
    print(
        f"  {'target':<31}{'req/s':>8}{'p50':>11}{'p99':>11}{'errors':>8}"
        f"{'proxy CPU':>11}{'CPU/req':>10}{'origin CPU':>12}{'wrk CPU':>9}{'other':>7}"
        f"{'machine':>9}"
    )
    columns = (
        ("p50_ms", ".2f", " ms", 11),
        ("p99_ms", ".2f", " ms", 11),
        ("errors", "", "", 8),
        ("proxy_cpu", ".0f", "%", 11),
        ("proxy_us_per_request", ".0f", " us", 10),
        ("origin_cpu", ".0f", "%", 12),
        ("wrk_cpu", ".0f", "%", 9),
        ("other_cpu", ".0f", "%", 7),
        ("machine_cpu", ".0f", "%", 9),
    )
    for t in scenario.targets:
        cells = [fmt(scenario.rps(t.name), ".0f", width=8)]
        for attribute, spec, suffix, width in columns:
            if attribute == "errors":
                cells.append(f"{scenario.errors(t.name):>{width}}")
            else:
                cells.append(fmt(scenario.median(t.name, attribute), spec, suffix, width))
        print(f"  {t.label:<31}" + "".join(cells))
    ratios = [
        f"{top}/{bottom} {fmt(scenario.ratio(top, bottom), '.2f', 'x')}"
        for top, bottom in (("gateway", "nginx"), ("gateway", "direct"), ("nginx", "direct"))
        if top in scenario.runs and bottom in scenario.runs
    ]
    print("  ratios (req/s): " + ", ".join(ratios))
    for t in scenario.targets:
        runs = scenario.runs.get(t.name, [])
        per_round = ", ".join(f"{m.result.requests_per_sec:.0f}" for m in runs)
        failed = [m.result.error_text() for m in runs if m.result.errors]
        print(f"  {t.name} per round: {per_round}" + (f"; errors: {failed}" if failed else ""))


def summary(
    opts: argparse.Namespace,
    scenarios: list[Scenario],
    transfers: list[Transfers],
) -> str:
    lines = [
        f"bench: {os.cpu_count()} cores, wrk -t{opts.threads} -c{opts.connections} "
        f"-d{opts.duration}s, {opts.rounds} round{'s' if opts.rounds != 1 else ''}, "
        f"backend workers={opts.workers}, proxy workers={opts.proxy_workers} "
        f"(nginx worker_processes = gateway workers), "
        f"access_log={'on' if opts.access_log else 'off'}"
        + (", backend=echo_upstream (dev fallback)" if opts.echo_backend else ""),
        f"{'scenario':<26}{'direct':<12}{'nginx':<12}{'gateway':<12}gw/nginx",
    ]

    def rps(s: Scenario, name: str) -> str:
        value = s.rps(name)
        return "-" if value is None else f"{value:.0f} r/s"

    notes: list[str] = []
    for s in scenarios:
        bar = BARS.get(s.key)
        ratio = s.ratio("gateway", "nginx")
        verdict = "-" if ratio is None or bar is None else pass_fail(ratio >= bar)
        lines.append(
            f"{s.title:<26}{rps(s, 'direct'):<12}{rps(s, 'nginx'):<12}{rps(s, 'gateway'):<12}"
            f"{fmt(ratio, '.2f', 'x'):<8}"
            + (f"(bar >= {bar}x: {verdict})" if bar is not None else "(no bar)")
            + (f"  [{s.label}]" if s.label else "")
        )
        errors = {t.name: s.errors(t.name) for t in s.targets if s.errors(t.name)}
        if errors:
            notes.append(f"{s.title}: errors " + ", ".join(f"{k} {v}" for k, v in errors.items()))
        other = max((s.median(t.name, "other_cpu") or 0.0) for t in s.targets)
        if other >= 20:
            notes.append(
                f"{s.title}: up to {other:.0f}% of a core went to other processes during the "
                "runs (median per target): noisy numbers"
            )
        cpu = s.median("gateway", "proxy_cpu")
        machine = s.median("gateway", "machine_cpu")
        if cpu is not None and machine is not None:
            notes.append(
                f"{s.title}: gateway process {cpu:.0f}% of one core, machine {machine:.0f}% busy "
                f"(nginx {fmt(s.median('nginx', 'proxy_cpu'), '.0f', '%')}); CPU per request: "
                f"gateway {fmt(s.median('gateway', 'proxy_us_per_request'), '.0f', ' us')}, "
                f"nginx {fmt(s.median('nginx', 'proxy_us_per_request'), '.0f', ' us')}"
            )
    for t in transfers:
        gw, ng = t.gateway, t.nginx
        name = f"{size_text(gw.size)} {t.direction}"
        if gw.ok and gw.rss_growth is not None:
            ok = gw.rss_growth < BAR_RSS_MIB * MIB
            text = (
                f"gateway RSS {gw.rss_growth / MIB:+.0f} MiB, {gw.mib_per_s:.0f} MiB/s; "
                f"nginx {fmt(ng.mib_per_s if ng.ok else None, '.0f', ' MiB/s')} "
                f"(bar < {BAR_RSS_MIB} MiB: {pass_fail(ok)})"
            )
        else:
            text = f"gateway FAILED: {gw.problem}"
        lines.append(f"{name:<26}{text}")
        if not ng.ok:
            notes.append(f"{name}: nginx FAILED: {ng.problem}")
    if any(s.key == "json" for s in scenarios):
        notes.append(
            "direct = one backend worker over plain HTTP; nginx and gateway = HTTPS over "
            f"{opts.workers} workers"
        )
    notes.append(
        f"{opts.nginx_version}; gateway at commit {revision()}; machine "
        f"{opts.idle_busy:.0f}% busy before the bench started"
    )
    return "\n".join(lines + [f"note: {n}" for n in notes])


def transfer_text(t: TransferResult) -> str:
    if not t.ok:
        return f"FAILED: {t.problem}"
    text = f"{t.mib_per_s:7.0f} MiB/s ({t.seconds:.1f} s)"
    if t.rss_growth is not None and t.rss_baseline is not None and t.rss_peak is not None:
        text += (
            f"  RSS baseline {t.rss_baseline / MIB:.1f} MiB, peak {t.rss_peak / MIB:.1f} MiB, "
            f"growth {t.rss_growth / MIB:+.1f} MiB (samples: {t.rss_samples})  "
            f"bar < {BAR_RSS_MIB} MiB: {pass_fail(t.rss_growth < BAR_RSS_MIB * MIB)}"
        )
    return text


def revision() -> str:
    """The commit measured, marked "+dirty" when the work tree has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")
