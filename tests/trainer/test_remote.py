"""The same tiny run against the judge and reward-model services over HTTP + Redis gives the embedded metrics."""

from __future__ import annotations

import pytest

from tests.conftest import free_port
from tests.procs import answers_200, spawn, stop, wait_until
from tests.worlds import write_config
from cgpo.trainer.config import ConfigError, load_config
from cgpo.trainer.loop import train
from cgpo.trainer.preflight import preflight


@pytest.mark.slow
def test_training_against_remote_services_matches_embedded(world, redis_url, subprocess_env):
    env = dict(subprocess_env, CGPO_REDIS_URL=redis_url, CGPO_LOG_LEVEL="warning",
               CGPO_JUDGES_ENABLED="instructions", CGPO_RM_MODELS=f"helpful={world}/rm")
    judges_port, rm_port = free_port(), free_port()
    procs = [spawn(["judges", "serve", "--port", str(judges_port)], env), spawn(["judges", "worker"], env),
             spawn(["rm", "serve", "--port", str(rm_port)], env), spawn(["rm", "worker"], env)]
    try:
        for port in (judges_port, rm_port):
            wait_until(lambda port=port: answers_200(f"http://127.0.0.1:{port}/readyz"), 90, f"service on {port}")
        rm_url, judges_url = f"http://127.0.0.1:{rm_port}", f"http://127.0.0.1:{judges_port}"
        with pytest.raises(ConfigError) as raised:  # what the running services do not serve, before any model loads
            preflight(load_config(write_config(world, "wrong-names", steps=1), [
                f"tasks.lower.reward_model={{url: '{rm_url}', model: nope}}",
                f"tasks.lower.judge_service={{url: '{judges_url}'}}", "tasks.lower.judges=[instructions, math]"]))
        assert sorted(str(raised.value).splitlines()) == [
            "tasks.lower.judges: unknown judge 'math'; known: ['instructions']",
            f"tasks.lower.reward_model.model: {rm_url} has no reward model 'nope'; it has ['helpful']"]
        embedded = train(load_config(write_config(world, "embedded", steps=4)), resume=False, log=lambda _: None)
        remote_config = load_config(write_config(world, "remote", steps=4), [
            f"tasks.lower.reward_model={{url: 'http://127.0.0.1:{rm_port}', model: helpful}}",
            f"tasks.lower.judge_service={{url: 'http://127.0.0.1:{judges_port}'}}"])
        remote = train(remote_config, resume=False, log=lambda _: None)
    finally:
        for proc in procs:
            stop(proc)
    assert [r["step"] for r in remote] == [r["step"] for r in embedded] == [0, 1, 2, 3, 4]
    for a, b in zip(embedded, remote, strict=True):
        keys = [k for k in a if not k.startswith("time/")]
        assert {k: a[k] for k in keys} == pytest.approx({k: b[k] for k in keys}, rel=1e-5, abs=1e-6)
