"""H: scale-out (issue 15): one Redis against a 3-master Redis Cluster, how the cluster's
masters share the keys and the commands, what waiting for a replica costs, and `serve
--processes 2` against one process.

The scenario starts its own cluster (`redis_server.own_cluster`): 3 masters and 3 replicas on
loopback ports from 7401, every node set up as the single Redis is (AOF fsynced on every
write, no snapshots). The router runs on it with its defaults: 16 partitions (6/5/5 over the
masters' slot ranges) and writes acknowledged by one replica (`WAIT`), as it settles
`ROUTER_PARTITIONS` and `ROUTER_MIN_REPLICAS` when it finds a cluster with replicas.

Each round measures, in an order that alternates between rounds:
- ingest, A's method (`serve --no-workers`, `wrk` with 64 connections for 10 s after a 1 s
  warm-up), in five set-ups: one Redis with 1 and with 2 serving processes; the cluster with
  1 process, with `ROUTER_MIN_REPLICAS=0` (no WAIT), and with 2 processes;
- delivery, B's method (3,000 events accepted by `serve --no-workers`, then delivered by
  `serve` to 10 subscribers on one receiver), on one Redis, on the cluster, and on the
  cluster with `ROUTER_MIN_REPLICAS=0`.
The ratios (cluster / one Redis, WAIT / no WAIT, 2 processes / 1) are taken within the round.

On the cluster (defaults), every master's `INFO commandstats` is read before and after each
ingest run and each delivery run (calls, commands inside scripts included; the benchmark's
and the cluster's own housekeeping left out), and after the delivery run each master is
SCANned for the run's keys (by key prefix). A master's share is compared with an even third;
the 16 partitions alone put 6/16 = 37.5 % on one master (12.5 % over a third), and the
registry's keys (subscribers, scope index) live on whichever master holds the prefix's own
tag.

Every set-up is also checked, not only timed: the events stored (the event streams' lengths,
nothing being dispatched) against the 2xx counted, non-2xx answers and load-generator
errors, deliveries arrived and duplicated, entries of the ready streams left unacknowledged
after a delivery run, and what the router processes logged at warning level or above; the
deliveries such a warning names are looked up after the run (done, or left to a reclaim?).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import fixtures
from bench.harness import Bench, log_problems, strip
from bench.procs import wait_listeners
from bench.redis_server import own_cluster
from bench.report import fmt, join, rounds_row
from bench.scenarios.a_ingest import max_rate, not_accepted
from bench.scenarios.b_fanout import FAN_OUT
from bench.stats import alternating, arrival_rate, median, per_unit, ratio
from bench.stores import Store


@dataclass(frozen=True)
class Size:
    seconds: float = 10
    connections: int = 64
    events: int = 3000


FULL, QUICK = Size(), Size(seconds=3, events=300)
EVEN = 15.0  # issue 15: every master's share within ±15 % of an even third
NO_WAIT = (("ROUTER_MIN_REPLICAS", "0"),)
# After a delivery run's last arrival, how long its work may take to be acknowledged before
# what is left is counted as left.
SETTLE_SECONDS = 5.0
WARNED_DELIVERY = re.compile(r"during (dlv_[0-9a-z]+)")


@dataclass(frozen=True)
class Setup:
    key: str
    store: str  # "single" or "cluster"
    processes: int = 1
    env: tuple[tuple[str, str], ...] = ()


LABELS = {
    "single": "one Redis",
    "single-p2": "one Redis, 2 processes",
    "cluster": "cluster",
    "cluster-nowait": "cluster without WAIT",
    "cluster-p2": "cluster, 2 processes",
}
INGEST = (
    Setup("single", "single"),
    Setup("single-p2", "single", processes=2),
    Setup("cluster", "cluster"),
    Setup("cluster-nowait", "cluster", env=NO_WAIT),
    Setup("cluster-p2", "cluster", processes=2),
)
DELIVERY = (
    Setup("single", "single"),
    Setup("cluster", "cluster"),
    Setup("cluster-nowait", "cluster", env=NO_WAIT),
)


async def run(bench: Bench, size: Size) -> None:
    rounds: list[dict[str, Any]] = []
    async with contextlib.AsyncExitStack() as stack:
        url = stack.enter_context(own_cluster(bench.logdir))
        cluster = await Store.connect_cluster(url, bench.args.router_env.get("ROUTER_PARTITIONS"))
        stack.push_async_callback(cluster.aclose)
        stores = {"single": bench.store, "cluster": cluster}
        port = await stack.enter_async_context(bench.receiving())
        urls = [f"http://127.0.0.1:{port}/h/{i}" for i in range(FAN_OUT)]
        for number, ingest in alternating(bench.repeats, INGEST):
            delivery = DELIVERY if number % 2 == 0 else tuple(reversed(DELIVERY))
            result: dict[str, Any] = {"load_average": os.getloadavg()[0], "ingest": {}}
            result["delivery"] = {}
            for setup in ingest:
                store = stores[setup.store]
                result["ingest"][setup.key] = await _ingest(bench, size, store, setup, number)
            for setup in delivery:
                store = stores[setup.store]
                result["delivery"][setup.key] = await _delivery(
                    bench, port, urls, size, store, setup, number
                )
            rounds.append(result)
        bench.report.details["H"] = {"cluster": cluster.describe(), "rounds": rounds}
    _rows(bench, size, rounds)


# ---------------------------------------------------------------------- measuring
async def _ingest(
    bench: Bench, size: Size, store: Store, setup: Setup, number: int
) -> dict[str, Any]:
    """One ingest run: `serve --no-workers [--processes N]` on a fresh prefix, a warm-up,
    then max-rate load; CPU, commands and the events stored counted around the load."""
    name = f"h{number}-{setup.key}-in"
    command = "serve --no-workers"
    if setup.processes > 1:
        command += f" --processes {setup.processes}"
    with bench.using(store):
        async with bench.keyspace(name) as (prefix, stack):
            proc, api = await bench.serve(
                stack, f"serve-{name}", prefix, command, **dict(setup.env)
            )
            await wait_listeners(proc, int(api.rsplit(":", 1)[1]), setup.processes)
            url = f"{api}/webhooks"
            warm = await max_rate(bench, url, size.connections, 1)
            commands, nodes = await store.commandstats(), await store.cpu_by_node()
            cpu = proc.tree_cpu_seconds()
            load = await max_rate(bench, url, size.connections, size.seconds)
            cpu_after = proc.tree_cpu_seconds()
            commands_after, nodes_after = await store.commandstats(), await store.cpu_by_node()
            stored = await store.stored_events(prefix)
            answered = warm["accepted"] + load["accepted"]
            result = {
                "prefix": prefix,
                "command": command,
                "env": dict(setup.env),
                "warm_up": strip(warm),
                "load": strip(load),
                "rate": load["accepted_per_s"],
                "router_cpu": per_unit(cpu, cpu_after, load["accepted"]),
                "redis_cpu": per_unit(
                    sum(nodes.values()), sum(nodes_after.values()), load["accepted"]
                ),
                "redis_nodes_cpu": {
                    n: per_unit(nodes[n], nodes_after[n], load["accepted"]) for n in nodes
                },
                "stored": stored,
                "answered_2xx": answered,
                "commands": _delta(commands, commands_after),
                "tags": store.tag_masters(prefix) if store.cluster else {},
            }
    return result | {"log_problems": log_problems(bench.logdir, [f"serve-{name}"])}


async def _delivery(
    bench: Bench,
    port: int,
    urls: list[str],
    size: Size,
    store: Store,
    setup: Setup,
    number: int,
) -> dict[str, Any]:
    """One delivery run, B's router round on `store`; on it, the commands from before the
    preload to the last arrival, and the run's keys on each master at the end."""

    name = f"h{number}-{setup.key}-dl"

    async def inspect(prefix: str) -> dict[str, Any]:
        after = await store.commandstats()
        keys = await store.keys_by_tag(fixtures.key_pattern(prefix))
        # Work the router said it could not finish: is it finished, or still pending?
        deadline = time.monotonic() + SETTLE_SECONDS
        while not await store.idle(prefix) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        warned = _named_in_warnings(bench.logdir / f"serve-{name}-0.log")
        return {
            "prefix": prefix,
            "commands": _delta(before, after),
            "keys": {master: dict(tags) for master, tags in keys.items()},
            "tags": store.tag_masters(prefix) if store.cluster else {},
            "warned_deliveries": len(warned),
            "warned_states": await store.delivery_states(prefix, warned),
            "ready_pending": await store.ready_pending(prefix),
        }

    with bench.using(store):
        before = await store.commandstats()
        result = await bench.deliver_preloaded(
            name,
            port,
            urls,
            size.events,
            ["serve"],
            env=dict(setup.env),
            inspect=inspect,
        )
    return result | {"rate": arrival_rate(result["receiver"]), "env": dict(setup.env)}


def _named_in_warnings(log: Path) -> list[str]:
    """The deliveries a router process's warnings name ("... during dlv_...; it will be
    reclaimed"), each once."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return []
    return list(dict.fromkeys(WARNED_DELIVERY.findall(text)))


def _delta(
    before: dict[str, dict[str, tuple[int, int]]], after: dict[str, dict[str, tuple[int, int]]]
) -> dict[str, dict[str, list[int]]]:
    """Per master: command -> [calls, µs] between two readings (commands that ran)."""
    out: dict[str, dict[str, list[int]]] = {}
    for master, stats in after.items():
        old = before.get(master, {})
        out[master] = {
            cmd: [calls - old.get(cmd, (0, 0))[0], usec - old.get(cmd, (0, 0))[1]]
            for cmd, (calls, usec) in stats.items()
            if calls - old.get(cmd, (0, 0))[0] > 0
        }
    return out


# ---------------------------------------------------------------------- distribution
def shares(counts: dict[str, float]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total if total else 0.0 for k, v in counts.items()}


def deviation(share: dict[str, float], expected: dict[str, float] | None = None) -> float:
    """The largest relative distance, in %, of a master's share from its expected share (an
    even split unless given)."""
    even = 1 / len(share)
    return max(abs(s / (expected[k] if expected else even) - 1) * 100 for k, s in share.items())


def tag_shares(tags: dict[str, str], partitions: int, masters: list[str]) -> dict[str, float]:
    """Each master's share of the partitions (what the tags alone would give it); `tags` maps
    the partitions' tags, in partition order, then the registry's, to their masters."""
    owned = dict.fromkeys(masters, 0)
    for master in list(tags.values())[:partitions]:
        owned[master] += 1
    return {m: owned[m] / partitions for m in masters}


def _keys_per_master(run: dict[str, Any]) -> dict[str, float]:
    return {m: float(sum(tags.values())) for m, tags in run["inspect"]["keys"].items()}


def _calls_per_master(commands: dict[str, dict[str, list[int]]]) -> dict[str, float]:
    return {m: float(sum(c[0] for c in stats.values())) for m, stats in commands.items()}


def _usec_per_master(commands: dict[str, dict[str, list[int]]]) -> dict[str, float]:
    return {m: float(sum(c[1] for c in stats.values())) for m, stats in commands.items()}


# ---------------------------------------------------------------------- rows
def _rows(bench: Bench, size: Size, rounds: list[dict[str, Any]]) -> None:
    def ing(key: str, field: str = "rate") -> list[Any]:
        return [r["ingest"][key][field] for r in rounds]

    def dlv(key: str, field: str = "rate") -> list[Any]:
        return [r["delivery"][key][field] for r in rounds]

    def ratios(new: list[Any], base: list[Any]) -> list[float | None]:
        return [ratio(a, b) for a, b in zip(new, base, strict=True)]

    def per_round(values: list[float | None]) -> str:
        return "ratios " + ", ".join(fmt(v) for v in values) if len(values) > 1 else ""

    cores = os.cpu_count()
    load = f"{size.connections} conns, {size.seconds:g} s"
    one, clus, nowait = ing("single"), ing("cluster"), ing("cluster-nowait")
    r1 = ratios(clus, one)
    bench.add(
        rounds_row(
            "H",
            f"ingest accepted/s, cluster vs one Redis, {load}",
            "ev/s",
            clus,
            baselines=one,
            ratios=r1,
            target="report",
            note=join(
                "baseline column: one Redis",
                per_round(r1),
                _cpu_note(rounds, "ingest", ["single", "cluster"], "event"),
                _health(rounds, "ingest", ["single", "cluster"]),
            ),
        )
    )
    d_one, d_clus, d_nowait = dlv("single"), dlv("cluster"), dlv("cluster-nowait")
    r2 = ratios(d_clus, d_one)
    bench.add(
        rounds_row(
            "H",
            f"deliveries/s, fan-out {FAN_OUT}, {size.events} events, cluster vs one Redis",
            "dlv/s",
            d_clus,
            baselines=d_one,
            ratios=r2,
            target="report",
            note=join(
                "baseline column: one Redis",
                per_round(r2),
                _cpu_note(rounds, "delivery", ["single", "cluster"], "delivery"),
                _health(rounds, "delivery", ["single", "cluster"]),
            ),
        )
    )
    _distribution_rows(bench, rounds)
    r4 = ratios(clus, nowait)
    bench.add(
        rounds_row(
            "H",
            "ingest accepted/s on the cluster, WAIT 1 replica (default) vs none",
            "ev/s",
            clus,
            baselines=nowait,
            ratios=r4,
            target="report",
            note=join(
                "baseline column: ROUTER_MIN_REPLICAS=0",
                per_round(r4),
                _wait_note(rounds, "ingest", "event"),
                _cpu_note(rounds, "ingest", ["cluster-nowait", "cluster"], "event"),
                _health(rounds, "ingest", ["cluster-nowait"]),
            ),
        )
    )
    r4d = ratios(d_clus, d_nowait)
    bench.add(
        rounds_row(
            "H",
            "deliveries/s on the cluster, WAIT 1 replica (default) vs none",
            "dlv/s",
            d_clus,
            baselines=d_nowait,
            ratios=r4d,
            target="report",
            note=join(
                "baseline column: ROUTER_MIN_REPLICAS=0",
                per_round(r4d),
                _wait_note(rounds, "delivery", "delivery"),
                _cpu_note(rounds, "delivery", ["cluster-nowait", "cluster"], "delivery"),
                _health(rounds, "delivery", ["cluster-nowait"]),
            ),
        )
    )
    for store, base, two in (
        ("one Redis", "single", "single-p2"),
        ("cluster", "cluster", "cluster-p2"),
    ):
        r5 = ratios(ing(two), ing(base))
        bench.add(
            rounds_row(
                "H",
                f"ingest accepted/s, serve --processes 2 vs 1, {store}",
                "ev/s",
                ing(two),
                baselines=ing(base),
                ratios=r5,
                target="report",
                note=join(
                    "baseline column: 1 process",
                    per_round(r5),
                    _cpu_note(rounds, "ingest", [base, two], "event"),
                    _health(rounds, "ingest", [two]),
                    f"{cores} cores shared with wrk and Redis",
                ),
            )
        )


def _distribution_rows(bench: Bench, rounds: list[dict[str, Any]]) -> None:
    """H's rows for the spread over the masters: keys after a delivery run, commands during
    an ingest and during a delivery run (the cluster, defaults)."""
    runs = [r["delivery"]["cluster"] for r in rounds]
    tags = runs[0]["inspect"]["tags"]
    partitions = len(tags) - 1  # the partitions' tags, then the registry's
    masters = sorted(runs[0]["inspect"]["keys"])
    expected = tag_shares(tags, partitions, masters)
    figures = {
        "keys per master after a delivery run (SCAN)": [_keys_per_master(r) for r in runs],
        "commands per master during ingest (commandstats calls)": [
            _calls_per_master(r["ingest"]["cluster"]["commands"]) for r in rounds
        ],
        "commands per master during a delivery run (commandstats calls)": [
            _calls_per_master(r["inspect"]["commands"]) for r in runs
        ],
    }
    usec = {
        "commands per master during ingest (commandstats calls)": [
            _usec_per_master(r["ingest"]["cluster"]["commands"]) for r in rounds
        ],
        "commands per master during a delivery run (commandstats calls)": [
            _usec_per_master(r["inspect"]["commands"]) for r in runs
        ],
    }
    owned = {m: round(s * partitions) for m, s in expected.items()}
    for measurement, per_round in figures.items():
        round_shares = [shares(counts) for counts in per_round]
        deviations = [deviation(s) for s in round_shares]
        beyond = [deviation(s, expected) for s in round_shares]
        median_share = {m: median(s[m] for s in round_shares) or 0.0 for m in masters}
        parts = [
            "median shares "
            + ", ".join(
                f"{m.rsplit(':', 1)[1]} ({owned[m]} partitions) {median_share[m]:.1%}"
                for m in masters
            ),
            f"the tags alone give {', '.join(f'{expected[m]:.1%}' for m in masters)} "
            f"(deviation {deviation(expected):.1f}%)",
            "beyond the tags: max " + ", ".join(f"{b:.1f}%" for b in beyond),
        ]
        if measurement in usec:
            time_shares = [shares(u) for u in usec[measurement]]
            parts.append(
                "share of Redis command time "
                + ", ".join(
                    f"{m.rsplit(':', 1)[1]} {median(s[m] for s in time_shares) or 0:.1%}"
                    for m in masters
                )
            )
        if "keys" in measurement:
            counts = [sum(c.values()) for c in per_round]
            registry = [list(r["inspect"]["tags"].values())[-1].rsplit(":", 1)[1] for r in runs]
            parts.append(
                f"{fmt(median(counts))} keys; the registry's tag (no partition) on "
                + ", ".join(registry)
            )
        bench.add(
            rounds_row(
                "H",
                measurement + ", max deviation from an even third",
                "%",
                deviations,
                target=f"≤ {EVEN:g}%",
                passes=lambda x: x <= EVEN,
                note=join(
                    ("per round " + ", ".join(f"{d:.1f}%" for d in deviations))
                    if len(deviations) > 1
                    else "",
                    *parts,
                ),
            )
        )


def _cpu_note(rounds: list[dict[str, Any]], phase: str, keys: list[str], unit: str) -> str:
    """Median CPU per unit of the router (all its processes) and of Redis (every node), per
    set-up; for the cluster's ingest, the masters' and the replicas' parts."""
    parts = []
    for key in keys:
        router = median(r[phase][key]["router_cpu" if phase == "ingest" else "cpu"] for r in rounds)
        redis = median(r[phase][key]["redis_cpu"] for r in rounds)
        if router is None:
            continue
        text = f"{LABELS[key]}: router {router:.0f} µs + Redis {redis or 0:.0f}"
        if phase == "ingest" and key.startswith("cluster"):
            masters = median(_nodes_cpu(r, key, True) for r in rounds) or 0
            replicas = median(_nodes_cpu(r, key, False) for r in rounds) or 0
            text += f" (masters {masters:.0f}, replicas {replicas:.0f})"
        parts.append(text)
    return f"CPU/{unit}: " + "; ".join(parts) if parts else ""


def _nodes_cpu(round_: dict[str, Any], key: str, masters: bool) -> float:
    """The masters' (or the replicas') CPU per event in one ingest run on the cluster."""
    run = round_["ingest"][key]
    owners = set(run["tags"].values())
    return sum(v or 0 for n, v in run["redis_nodes_cpu"].items() if (n in owners) == masters)


def _wait_note(rounds: list[dict[str, Any]], phase: str, unit: str) -> str:
    """WAIT calls on the masters per unit of work, with the default and with none."""

    def per_unit_waits(key: str) -> float | None:
        values = []
        for r in rounds:
            run = r[phase][key]
            commands = run["commands"] if phase == "ingest" else run["inspect"]["commands"]
            waits = sum(stats.get("wait", [0])[0] for stats in commands.values())
            units = run["load"]["accepted"] if phase == "ingest" else run["receiver"]["count"]
            values.append(waits / units if units else None)
        return median(values)

    with_wait, without = per_unit_waits("cluster"), per_unit_waits("cluster-nowait")
    if with_wait is None:
        return ""
    return f"WAIT calls per {unit}: {with_wait:.2f} (default), {without or 0:.2f} (none)"


def _health(rounds: list[dict[str, Any]], phase: str, keys: list[str]) -> str:
    """What went wrong, if anything: events stored against 202s counted, refusals, arrivals,
    duplicates, warnings logged. Empty when nothing did."""
    notes: dict[str, None] = {}
    for number, r in enumerate(rounds, 1):
        for key in keys:
            run = r[phase][key]
            if phase == "ingest":
                if run["stored"] < run["answered_2xx"]:
                    lost = run["answered_2xx"] - run["stored"]
                    notes[f"{LABELS[key]}: {lost} events answered 2xx but not stored"] = None
                refused = not_accepted(run["load"]) or not_accepted(run["warm_up"])
                if refused:
                    notes[f"{LABELS[key]}: {refused}"] = None
            else:
                stats, expected = run["receiver"], run["expected"]
                if stats["count"] < expected:
                    notes[f"{LABELS[key]}: {stats['count']}/{expected} arrived"] = None
                if stats["unique_webhook_ids"] != stats["count"]:
                    notes[
                        f"{LABELS[key]}: {stats['count'] - stats['unique_webhook_ids']} duplicates"
                    ] = None
            if phase == "delivery" and run["inspect"]["ready_pending"]:
                left = run["inspect"]["ready_pending"]
                notes[f"{LABELS[key]}: {left} ready entries unacknowledged after the run"] = None
            logged = run.get("log_problems", {})
            if logged:
                kinds = "; ".join(f"{n} x {kind}" for kind, n in logged["kinds"].items())
                text = f"{LABELS[key]}, round {number}, logged {kinds}"
                if phase == "delivery" and run["inspect"]["warned_deliveries"]:
                    states = ", ".join(
                        f"{n} {state}" for state, n in run["inspect"]["warned_states"].items()
                    )
                    named = run["inspect"]["warned_deliveries"]
                    text += f"; the {named} deliveries named: {states}"
                notes[text] = None
    if not notes:
        if phase == "ingest":
            return "every 2xx stored, no refusals, nothing logged at warning or above"
        return "every delivery arrived once, nothing logged at warning or above"
    return join(*notes)
