"""`serve --processes N` and `worker --processes N`: one machine's cores, one port, one drain."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import ADMIN_TOKEN, REAL_REDIS_URL, delete_keys_sync


def _router() -> list[str]:
    script = Path(sys.executable).parent / "webhook-router"
    return [str(script)] if script.exists() else [sys.executable, "-m", "router"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children(pid: int) -> list[int]:
    done = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(line) for line in done.stdout.split()]


def _wait_for(check, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _post_event(port: int) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/webhooks",
        data=b'{"type":"ContactCreate","locationId":"loc_1"}',
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def real_env() -> dict[str, str]:
    if not REAL_REDIS_URL:
        pytest.skip("REDIS_URL is not set: several processes need a shared Redis")
    prefix = "tp" + uuid.uuid4().hex[:10]
    env = {**os.environ, "ROUTER_KEY_PREFIX": prefix, "ROUTER_ADMIN_TOKEN": ADMIN_TOKEN}
    env["ROUTER_LOG_LEVEL"] = "warning"
    yield env
    delete_keys_sync(REAL_REDIS_URL, prefix)


def test_serve_runs_n_processes_on_one_port_and_drains_them_together(
    real_env: dict[str, str],
) -> None:
    port = _free_port()
    parent = subprocess.Popen(
        [*_router(), "serve", "--port", str(port), "--processes", "2"], env=real_env
    )
    try:
        _wait_for(lambda: len(_children(parent.pid)) == 2 and _healthy(port))
        listeners = subprocess.run(
            ["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True
        ).stdout
        assert len(listeners.strip().splitlines()) == 2  # both children bound the port
        assert [_post_event(port) for _ in range(40)] == [202] * 40
    finally:
        parent.send_signal(signal.SIGTERM)
        code = parent.wait(40)
    assert code == 0
    assert _children(parent.pid) == []


def test_a_serving_process_that_dies_is_started_again(real_env: dict[str, str]) -> None:
    port = _free_port()
    parent = subprocess.Popen(
        [*_router(), "serve", "--port", str(port), "--processes", "2"], env=real_env
    )
    try:
        _wait_for(lambda: len(_children(parent.pid)) == 2 and _healthy(port))
        victim = _children(parent.pid)[0]
        os.kill(victim, signal.SIGKILL)
        _wait_for(lambda: victim not in _children(parent.pid) and len(_children(parent.pid)) == 2)
        _wait_for(lambda: _healthy(port))
        assert _post_event(port) == 202
    finally:
        parent.send_signal(signal.SIGTERM)
        parent.wait(40)


def test_worker_runs_n_processes(real_env: dict[str, str]) -> None:
    parent = subprocess.Popen([*_router(), "worker", "--processes", "2"], env=real_env)
    try:
        _wait_for(lambda: len(_children(parent.pid)) == 2)
    finally:
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(40) == 0


@pytest.mark.parametrize("command", [["serve"], ["worker"]])
def test_several_processes_on_the_embedded_store_are_refused_with_one_line(
    command: list[str],
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    done = subprocess.run(
        [*_router(), *command, "--processes", "2"], env=env, capture_output=True, timeout=30
    )
    assert done.returncode == 2
    (line,) = done.stderr.decode().strip().splitlines()
    assert line.startswith("error: ")


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_a_bad_process_count_is_refused(value: str) -> None:
    done = subprocess.run(
        [*_router(), "serve", "--processes", value], capture_output=True, timeout=30
    )
    assert done.returncode == 2
    assert b"--processes" in done.stderr
