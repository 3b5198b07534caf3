"""Start and stop the project's service processes in tests, the way they are deployed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``python -m cgpo ARGS`` in its own session (so a test can kill its whole process group)."""
    return subprocess.Popen([sys.executable, "-m", "cgpo", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def wait_until(predicate: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def answers_200(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def app_server(app: Any) -> Iterator[str]:
    """Serve a gateway app as deployed (uvicorn with the gateway's limits) on a free loopback port, in
    a thread of this process; yields its base URL."""
    import socket

    import uvicorn

    from cgpo.services.common.server import uvicorn_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, app.state.settings, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started, 30, "the server to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextlib.contextmanager
def worker_thread(handler: Any, settings: Any, service: str) -> Iterator[Any]:
    """A queue worker for ``service`` running ``handler`` in a thread of this process, until the block ends."""
    from cgpo.services.common.worker import Worker

    worker = Worker(handler, settings, service)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(10)
