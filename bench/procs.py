"""Starting and stopping the benchmark's processes: every process started here is stopped
by its own pid when its `with` block ends, whatever happened inside it."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import aiohttp

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def router_cli() -> list[str]:
    """The installed `webhook-router` console script (or `python -m router` without it)."""
    script = shutil.which("webhook-router")
    return [script] if script else [sys.executable, "-m", "router"]


def python_module(module: str) -> list[str]:
    return [sys.executable, "-m", module]


class Proc:
    """One child process, its output in a log file; stopped (TERM, then KILL) on exit."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logdir: Path) -> None:
        self.name = name
        self.argv = argv
        self.log_path = logdir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def rss_bytes(self) -> int | None:
        """Resident set size from /proc/<pid>/status (VmRSS), or None once it has exited."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def descendants(self) -> list[int]:
        """The pids of this process's children, theirs, and so on (`serve --processes N`)."""
        found: list[int] = []
        todo = [self.pid]
        while todo:
            pid = todo.pop()
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                continue
            found += [int(c) for c in children]
            todo += [int(c) for c in children]
        return found

    def tree_cpu_seconds(self) -> float | None:
        """CPU time so far of this process and its live descendants (None once it has
        exited)."""
        own = self.cpu_seconds()
        if own is None:
            return None
        return own + sum(pid_cpu_seconds(pid) or 0.0 for pid in self.descendants())

    def cpu_seconds(self) -> float | None:
        """User + system CPU time so far, from /proc/<pid>/stat, or None once it has exited."""
        return pid_cpu_seconds(self.pid)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(sig)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()
        return self.popen.returncode

    def wait(self, timeout: float) -> int:
        """Wait for the process to end by itself; killed (and TimeoutError) past `timeout`."""
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop(signal.SIGKILL)
            raise TimeoutError(f"{self.name} did not finish within {timeout:g}s") from None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Proc:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def wait_http(proc: Proc, url: str, timeout: float = 30.0) -> None:
    """Return once `url` answers 200; raise if the process dies or `timeout` passes."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, OSError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{proc.name} not ready at {url} after {timeout:g}s:\n{proc.tail()}")


def pid_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time so far of process `pid`, from /proc/<pid>/stat, or None once it
    has exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime and stime are fields 14 and 15 of stat(5); [0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listeners(port: int) -> int:
    """How many sockets listen on loopback TCP `port` (several with SO_REUSEPORT)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                count += 1
    return count


async def wait_listeners(proc: Proc, port: int, count: int, timeout: float = 30.0) -> None:
    """Return once `count` sockets listen on `port` (every process of `serve --processes N`
    is taking connections); raise if `proc` dies or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while listeners(port) < count:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited early:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.name}: fewer than {count} listeners on {port}")
        await asyncio.sleep(0.1)


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """The parent's environment without its ROUTER_* settings, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
    env.update(extra)
    return env
