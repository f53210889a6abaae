"""`--processes N`: one machine's cores used by N copies of a command, without an external
process manager.

The parent validates the settings, then starts N children running the same command with
`--processes 1` (each with its own event loop, Redis connections and workers; `serve`'s share
one port through SO_REUSEPORT, so the kernel spreads connections over them). SIGTERM or SIGINT
to the parent is passed to every child, which drains as a single process would. A child that
dies on its own is started again; one that keeps dying at once stops the whole group.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import FrameType

log = logging.getLogger("router.processes")

AUTO = "auto"
QUICK_DEATH_SECONDS = 5.0  # a child dying sooner than this after its start "dies at once"
QUICK_DEATHS_ALLOWED = 3
POLL_SECONDS = 0.2


def processes_option(value: str) -> int:
    """`--processes` as a count: a positive number, or `auto` for one per core."""
    if value == AUTO:
        return os.cpu_count() or 1
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a positive number or auto") from None
    if count < 1:
        raise argparse.ArgumentTypeError("must be a positive number or auto")
    return count


def add_processes_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--processes",
        type=processes_option,
        default=1,
        metavar="N",
        help=f"run N {what} processes on this machine (auto: one per core; default 1); "
        "not with the embedded store, which lives inside one process",
    )


class _Child:
    def __init__(self, argv: Sequence[str], env: dict[str, str]) -> None:
        self.argv = list(argv)
        self.env = env
        self.started = time.monotonic()
        self.popen = subprocess.Popen(self.argv, env=env)

    def restart(self) -> None:
        self.started = time.monotonic()
        self.popen = subprocess.Popen(self.argv, env=self.env)


def supervise(command: Sequence[str], count: int, env: dict[str, str], *, grace: float) -> int:
    """Run `count` copies of `webhook-router <command>` until SIGTERM/SIGINT, then stop them
    (waiting up to `grace` seconds for their drain). Returns the exit code for the group."""
    argv = [sys.executable, "-m", "router", *command]
    stopping: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    previous: dict[int, Callable[..., object] | int | None] = {
        sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    children = [_Child(argv, env) for _ in range(count)]
    log.info("started %d processes: %s", count, " ".join(command))
    quick_deaths = 0
    code = 0
    try:
        while not stopping:
            time.sleep(POLL_SECONDS)
            for child in children:
                status = child.popen.poll()
                if status is None or stopping:
                    continue
                lived = time.monotonic() - child.started
                quick_deaths = quick_deaths + 1 if lived < QUICK_DEATH_SECONDS else 0
                if quick_deaths > QUICK_DEATHS_ALLOWED:
                    log.error("processes keep exiting at once (last status %d); stopping", status)
                    code = 1
                    stopping.append(signal.SIGTERM)
                    break
                log.warning(
                    "process %d exited with status %d; starting another", child.popen.pid, status
                )
                child.restart()
    finally:
        for child in children:
            if child.popen.poll() is None:
                child.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in children:
            try:
                child.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.popen.kill()
                child.popen.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
    return code
