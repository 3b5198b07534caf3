"""The distributed path end to end: the compose topology as processes on loopback, and ``cgpo train``
against it by URL, with a judge worker killed and Redis restarted while it trains.

Each service runs with the command and environment docker-compose.yml gives it (the RM worker as
docker-compose.cpu.yml's CPU twin); only what a loopback deployment must change is overridden: the Redis
URL and ports, the model path, and a short visibility timeout so the killed worker's jobs come back
quickly. Redis runs with an append-only file, as in the compose file, so a restart keeps the queue.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
import yaml

from cgpo.services.common.keys import Keys
from cgpo.services.common.schemas import JobResult
from tests.conftest import free_port
from tests.procs import answers_200, wait_until
from tests.test_compose import resolve
from tests.worlds import write_config
from cgpo.trainer.config import load_config
from cgpo.trainer.loop import train

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]
STEPS = 10


class Redis:
    """redis-server with an append-only file in ``directory``, restartable on the same port."""

    def __init__(self, directory: Path) -> None:
        self.port, self.directory = free_port(), directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync",
                                      "always", "--save", ""], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._pings, 10, "redis-server")

    def _pings(self) -> bool:
        try:
            return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # SIGTERM: redis flushes the append-only file and exits
            self.proc.wait(10)
            self.proc = None


def compose_service(name: str) -> tuple[list[str], dict[str, str]]:
    """(command, environment) of a service, the CPU override taking precedence, defaults resolved."""
    merged: dict = {}
    for file in ("docker-compose.yml", "docker-compose.cpu.yml"):
        merged.update(yaml.safe_load((REPO / file).read_text())["services"].get(name, {}))
    return [resolve(p) for p in merged["command"]], {k: resolve(v) for k, v in merged["environment"].items()}


def start(name: str, env_base: dict[str, str], logs: Path, port: int | None = None,
          **overrides: str) -> subprocess.Popen[bytes]:
    command, env = compose_service(name)
    assert command[0] == "cgpo"
    args = command[1:]
    if port is not None:
        args[args.index("--port") + 1] = str(port)
        args[args.index("--host") + 1] = "127.0.0.1"
    log = (logs / f"{name}-{time.monotonic_ns()}.log").open("wb")
    return subprocess.Popen([sys.executable, "-m", "cgpo", *args], env={**env_base, **env, **overrides},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def steps_done(path: Path) -> int:
    """Training steps written (row 0 is the initial policy's evaluation)."""
    if not path.exists():
        return 0
    return sum(json.loads(line)["step"] > 0 for line in path.read_text().splitlines() if line.endswith("}"))


@pytest.mark.slow
def test_training_through_the_stack_survives_a_dead_worker_and_a_redis_restart(world, subprocess_env,
                                                                               tmp_path):
    server = Redis(tmp_path)
    server.start()
    logs = tmp_path / "logs"
    logs.mkdir()
    local = {"CGPO_REDIS_URL": server.url, "CGPO_LOG_LEVEL": "warning", "CGPO_VISIBILITY_TIMEOUT_S": "3",
             "CGPO_JUDGES_ENABLED": "instructions", "CGPO_RM_MODELS": f"helpful={world}/rm"}
    judges_port, rm_port = free_port(), free_port()
    procs = {"judges": start("judges", subprocess_env, logs, judges_port, **local),
             "rm": start("rm", subprocess_env, logs, rm_port, **local),
             "rm-worker": start("rm-worker-cpu", subprocess_env, logs, **local),
             "judges-worker-1": start("judges-worker", subprocess_env, logs, **local),
             "judges-worker-2": start("judges-worker", subprocess_env, logs, **local)}
    run = None
    try:
        for port in (judges_port, rm_port):
            wait_until(lambda port=port: answers_200(f"http://127.0.0.1:{port}/readyz"), 90, f"gateway on {port}")
        embedded = train(load_config(write_config(world, "e2e-embedded", steps=STEPS)), resume=False,
                         log=lambda _: None)

        config = write_config(world, "e2e-remote", steps=STEPS)
        metrics = world / "e2e-remote" / "metrics.jsonl"
        shutil.rmtree(world / "e2e-remote", ignore_errors=True)
        run = subprocess.Popen(
            [sys.executable, "-m", "cgpo", "train", str(config),
             f"tasks.lower.reward_model={{url: 'http://127.0.0.1:{rm_port}', model: helpful}}",
             f"tasks.lower.judge_service={{url: 'http://127.0.0.1:{judges_port}'}}", "--no-resume"],
            env=dict(subprocess_env, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

        wait_until(lambda: steps_done(metrics) >= 2 or run.poll() is not None, 120, "two remote steps")
        kill(procs["judges-worker-1"])  # the other worker carries on; the dead one's claimed jobs come back
        killed_at = steps_done(metrics)
        wait_until(lambda: steps_done(metrics) >= 4 or run.poll() is not None, 120, "two more steps")
        restarted_at = steps_done(metrics)
        server.stop()
        time.sleep(1.0)  # the trainer's requests meanwhile are answered 503 and retried
        server.start()
        output = run.communicate(timeout=240)[0].decode()
        assert run.returncode == 0, output[-3000:]
        assert killed_at < restarted_at < STEPS  # both happened while the run was training
    finally:
        if run is not None and run.poll() is None:
            run.kill()
        for proc in procs.values():
            kill(proc)

    remote = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in remote] == list(range(0, STEPS + 1))
    for a, b in zip(embedded, remote, strict=True):
        keys = [k for k in a if not k.startswith("time/")]
        assert {k: a[k] for k in keys} == pytest.approx({k: b[k] for k in keys}, rel=1e-5, abs=1e-6)

    # every request the trainer sent was queued once (retries carry the same id) and answered once, without
    # an error; nothing is left in a queue or dead-lettered
    client = redis.Redis.from_url(server.url)
    for service in ("judges", "rm"):
        keys = Keys(service)
        requests = {k.decode().rsplit(":", 1)[1] for k in client.scan_iter(match=keys.request("*"), count=1000)}
        results = {k.decode().rsplit(":", 1)[1]: JobResult.model_validate_json(client.get(k))
                   for k in client.scan_iter(match=keys.result("*"), count=1000)}
        assert requests and set(results) == requests, service
        assert all(r.error is None for r in results.values()), service
        assert client.xlen(keys.stream) == 0 and client.xlen(keys.dead) == 0, service
    # one judge request per step, one for each of the two evaluations (the initial policy's and the final
    # one) and two for each one's IFEval accuracies (strict, loose), one for the baselines; one RM request
    # per step and one per evaluation: nothing was submitted twice under a new id
    assert len(list(client.scan_iter(match=Keys("judges").request("*")))) == STEPS + 7
    assert len(list(client.scan_iter(match=Keys("rm").request("*")))) == STEPS + 2
    server.stop()
