"""Recording results: the table's rows, the machine they were measured on, and the files a
run writes (bench/results/<run id>.json and .md, and latest.md)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.procs import REPO
from bench.stats import median, spread

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = (
    "webhook-router",
    "aiohttp",
    "redis",
    "hiredis",
    "pydantic",
    "pydantic-core",
    "orjson",
    "uvloop",
)


@dataclass
class Row:
    scenario: str
    measurement: str
    value: float | None
    unit: str
    baseline: float | None = None
    ratio: float | None = None
    target: str = ""
    passed: bool | None = None
    note: str = ""
    # (min, max) over the rounds of the figure the target judges: the ratio when there is
    # one, else the value.
    spread: tuple[float, float] | None = None
    rounds: int = 1


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    profiles: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    load: dict[str, float] = field(default_factory=dict)  # 1-min load average at the start


def join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"
    return f"{text} {unit}".strip()


def cpu_note(router: float | None, redis: float | None, base: float | None, unit: str) -> str:
    """The CPU each side spent per unit: unlike the rates, it barely moves with how the
    scheduler shares the two cores between the processes."""
    if router is None or base is None:
        return ""
    redis_part = f" + Redis {redis:.0f}" if redis is not None else ""
    return f"CPU/{unit}: router {router:.0f} µs{redis_part}, baseline {base:.0f} µs"


def span(values: list[float | None], unit: str = "") -> str:
    """`min-max` of the values (one figure when they are equal)."""
    low_high = spread(values)
    if low_high is None:
        return "-"
    low, high = low_high
    return fmt(low, unit) if fmt(low) == fmt(high) else f"{fmt(low)}\N{EN DASH}{fmt(high, unit)}"


def spread_text(row: Row) -> str:
    if row.spread is None or row.rounds < 2:
        return f"{row.rounds} round" if row.rounds == 1 else "-"
    unit = "" if row.ratio is not None else row.unit
    return f"{span(list(row.spread), unit)} ({row.rounds})"


def console_line(row: Row) -> str:
    verdict = {True: "PASS", False: "FAIL", None: ""}[row.passed]
    return (
        f"{row.scenario:2} {row.measurement:58} {fmt(row.value, row.unit):>13} "
        f"{fmt(row.baseline, row.unit):>13} {fmt(row.ratio):>5} {spread_text(row):>19} "
        f"{row.target:>10} {verdict:4}"
    )


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| | measurement | router | baseline | ratio | spread (rounds) | target | result | note |",
        "|---|---|---:|---:|---:|---:|---|---|---|",
    ]
    for row in rows:
        verdict = {True: "**pass**", False: "**FAIL**", None: ""}[row.passed]
        lines.append(
            f"| {row.scenario} | {row.measurement} | {fmt(row.value, row.unit)} | "
            f"{fmt(row.baseline, row.unit)} | {fmt(row.ratio)} | {spread_text(row)} | "
            f"{row.target} | {verdict} | {row.note} |"
        )
    return "\n".join(lines)


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git(*argv: str) -> str:
    return subprocess.run(
        ["git", *argv], cwd=REPO, capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()


def git_state() -> str:
    """The measured tree: commit, and whether it had uncommitted changes."""
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" with uncommitted changes" if dirty else "")


def machine_info(redis_server: dict[str, Any]) -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory": mem,
        "os": platform.platform(),
        "python": platform.python_version(),
        "redis_server": redis_server.get("redis_version"),
        "git": git_state(),
        "event_loop": "uvloop" if _version("uvloop") != "not installed" else "asyncio",
        "packages": {p: _version(p) for p in PACKAGES},
    }


def _redis_text(redis: dict[str, Any]) -> str:
    whose = "the benchmark's own server" if redis.get("own_server") else "a given server"
    save = redis.get("save")
    return (
        f"Redis {redis.get('redis_version')} ({whose}: appendonly {redis.get('appendonly')}, "
        f"appendfsync {redis.get('appendfsync')}, "
        f"RDB snapshots {'off' if save == '' else repr(save)})"
    )


def render_markdown(report: Report, run: dict[str, Any]) -> str:
    machine = run["machine"]
    parts = [
        f"# Benchmark run {run['run_id']}",
        "",
        f"Command: `{run['command']}`",
        "",
        f"Machine: {machine['cores']} cores ({machine['cpu']}), {machine['memory']}, "
        f"{machine['os']}; Python {machine['python']}, every Python process (router, "
        f"baselines, load generator, receivers) on {machine['event_loop']}; "
        f"{_redis_text(run['redis'])}; tree {machine['git']}; "
        + ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
        + f"; {machine.get('wrk', 'wrk not installed')}. Load generator, router, receivers "
        "and Redis share the cores.",
        "",
        markdown_table(report.rows),
        "",
        f"Rounds: {run['repeats']} for every scenario but E (one). Where a row has a baseline, "
        "each round measures both sides back to back, in an order that alternates between "
        "rounds, and the ratio is taken within the round. The table gives medians over the "
        "rounds; `spread` is the lowest and highest round of the figure the target judges "
        "(the ratio where there is one).",
        "",
        "Sizes: "
        + "; ".join(
            f"{name} " + ", ".join(f"{k}={v}" for k, v in size.items())
            for name, size in run["sizes"].items()
        )
        + ".",
        "",
        "1-minute load average when each scenario started (other work on the machine shows "
        "here): " + ", ".join(f"{k} {v:.2f}" for k, v in report.load.items()) + ".",
    ]
    if run.get("router_env"):
        parts += ["", f"Router environment: {run['router_env']}."]
    if report.errors:
        parts += ["", "## Scenarios that failed to run", ""]
        parts += [f"- {k}: {v}" for k, v in report.errors.items()]
    for name, prof in report.profiles.items():
        parts += ["", f"## Profile of the router during {name} (py-spy, `{prof.get('file')}`)"]
        if "error" in prof:
            parts += ["", f"py-spy failed: {prof['error']}"]
            continue
        parts += ["", f"{prof['samples']} samples. Top frames by own time:", ""]
        parts += [f"{i}. {share:.1%} {frame}" for i, (frame, share) in enumerate(prof["self"], 1)]
        parts += ["", "Project functions by total (inclusive) time:", ""]
        parts += [f"{i}. {share:.1%} {frame}" for i, (frame, share) in enumerate(prof["total"], 1)]
    return "\n".join(parts) + "\n"


def rounds_row(
    scenario: str,
    measurement: str,
    unit: str,
    values: list[float | None],
    *,
    baselines: list[float | None] | None = None,
    ratios: list[float | None] | None = None,
    target: str = "",
    passes: Callable[[float], bool] | None = None,
    note: str = "",
) -> Row:
    """A row from per-round figures: medians, and the spread of the judged figure (the
    ratios when given, else the values)."""
    judged = ratios if ratios is not None else values
    headline = median(judged)
    return Row(
        scenario,
        measurement,
        median(values),
        unit,
        median(baselines) if baselines is not None else None,
        median(ratios) if ratios is not None else None,
        target,
        passes(headline) if passes is not None and headline is not None else None,
        note,
        spread(judged),
        len(judged),
    )


def paired_row(
    scenario: str,
    measurement: str,
    unit: str,
    target: str,
    bound: float,
    rounds: list[dict[str, Any]],
    *,
    cpu_unit: str,
    extra: str = "",
) -> Row:
    """The row of rounds of (router, baseline) pairs. Each round holds `router_rate`,
    `baseline_rate`, `ratio` (taken within the round) and the CPU per unit of each side
    (`router_cpu`, `redis_cpu`, `baseline_cpu`); the row gives the medians."""
    ratios = [r["ratio"] for r in rounds]
    return rounds_row(
        scenario,
        measurement,
        unit,
        [r["router_rate"] for r in rounds],
        baselines=[r["baseline_rate"] for r in rounds],
        ratios=ratios,
        target=target,
        passes=lambda x: x >= bound,
        note=join(
            "ratios " + ", ".join(fmt(x) for x in ratios) if len(rounds) > 1 else "",
            extra,
            cpu_note(
                median(r["router_cpu"] for r in rounds),
                median(r["redis_cpu"] for r in rounds),
                median(r["baseline_cpu"] for r in rounds),
                cpu_unit,
            ),
        ),
    )
