"""Max-rate load with `wrk` (https://github.com/wg/wrk; Debian package `wrk`), the load
generator a user would reach for: written in C, so it takes less of the shared cores than the
Python generator (bench/loadgen.py), which A falls back to when wrk is not installed.

A Lua script makes every request the benchmark's 1 KB ContactCreate body with ids of its own
(the router would answer a repeated webhookId as a duplicate): `<tag><thread><counter>`, the
same width as bench/payload.py's. wrk counts responses by class only, so `accepted` is the
2xx answers; anything else is reported under `statuses["non-2xx"]` and `errors`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

from bench.payload import ID_WIDTH, body_parts

THREADS = 2

_SCRIPT = """
local head, middle, tail = {head}, {middle}, {tail}
local tag = "{tag}"
local thread_count = 0
local counter = 0

function setup(thread)
  thread:set("thread_number", thread_count)
  thread_count = thread_count + 1
end

local headers = {{["Content-Type"] = "application/json"}}

request = function()
  counter = counter + 1
  local ident = string.format("%s%02d%0{digits}d", tag, thread_number, counter)
  local body = head .. ident .. middle .. "wh" .. string.sub(ident, 3) .. tail
  return wrk.format("POST", nil, headers, body)
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nWRK-JSON {{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, ' ..
    '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def available() -> str | None:
    return shutil.which("wrk")


def version() -> str:
    """wrk's own version line (it prints it with its usage, on any option it does not know)."""
    binary = available()
    if binary is None:
        return "not installed"
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10)
    first = (out.stdout or out.stderr).splitlines()
    return first[0].split(" [")[0] if first else "unknown"


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def script(path: Path) -> Path:
    """Write the request script to `path` with a fresh tag (ids unique across runs)."""
    head, middle, tail = body_parts()
    tag = secrets.token_hex(3)  # 6 characters, + 2 for the thread = 8, as payload's tags
    path.write_text(
        _SCRIPT.format(
            head=_lua_string(head),
            middle=_lua_string(middle),
            tail=_lua_string(tail),
            tag=tag,
            digits=ID_WIDTH - 8,
        )
    )
    return path


async def run(url: str, connections: int, seconds: float, workdir: Path) -> dict[str, Any]:
    """Run wrk against `url` for `seconds`; a report shaped like bench/loadgen.py's."""
    lua = script(workdir / f"wrk-{secrets.token_hex(4)}.lua")
    argv = [
        available() or "wrk",
        f"-t{THREADS}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(lua),
        url,
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=seconds + 60)
    text = out.decode(errors="replace")
    line = next((x for x in text.splitlines() if x.startswith("WRK-JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}):\n{text[-2000:]}")
    raw = json.loads(line.removeprefix("WRK-JSON "))
    elapsed = raw["duration_us"] / 1e6
    accepted = raw["requests"] - raw["status"]
    errors = {k: raw[k] for k in ("connect", "read", "write", "timeout") if raw[k]}
    return {
        "generator": f"wrk ({THREADS} threads)",
        "url": url,
        "connections": connections,
        "sent": raw["requests"],
        "accepted": accepted,
        "statuses": {"2xx": accepted} | ({"non-2xx": raw["status"]} if raw["status"] else {}),
        "errors": errors,
        "elapsed": elapsed,
        "accepted_per_s": accepted / elapsed if elapsed > 0 else 0.0,
        "latency_ms": {"p50": raw["p50_us"] / 1e3, "p99": raw["p99_us"] / 1e3},
    }
