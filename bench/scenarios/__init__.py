"""One module per measurement, each readable alone: what it measures is in its docstring,
its sizes (full and `--quick`) at its top, and `run(bench, size)` does it."""

from __future__ import annotations

from types import ModuleType

from bench.scenarios import (
    a_ingest,
    b_fanout,
    c_latency,
    d_dispatch,
    e_memory,
    f_workers,
    g_isolation,
    h_cluster,
)

SCENARIOS: dict[str, ModuleType] = {
    "A": a_ingest,
    "B": b_fanout,
    "C": c_latency,
    "D": d_dispatch,
    "E": e_memory,
    "F": f_workers,
    "G": g_isolation,
    "H": h_cluster,
}
