"""Shared fixtures: a real redis-server per test session, started on a free port."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

REPO = Path(__file__).resolve().parents[1]
IFEVAL_DATA = REPO / "data" / "ifeval"
"""IFEval's prompts and GPT-4 responses, shipped with the repository (data/ifeval/README.md)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server process this test session owns (no persistence)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed (make test installs it)")
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        for _ in range(200):
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.025)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A clean Redis database for one test."""
    if redis_server.proc is None:  # a test stopped it
        redis_server.start()
    redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for service processes started by a test (no inherited CGPO_* settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CGPO_")}
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The trainer's tiny world (tests/worlds.py), built once per test module."""
    import torch

    from tests.worlds import make_world

    torch.set_num_threads(1)
    return make_world(tmp_path_factory.mktemp("world"))
