"""docker-compose.yml and docker-compose.cpu.yml, checked statically (no Docker engine needed).

Services, images, ports, healthchecks, profiles and GPU reservations are as documented; every command is
a valid ``cgpo`` invocation; every ``CGPO_*`` variable is a real setting and takes an overridable default;
the Dockerfiles run as a non-root user with a /readyz healthcheck. Where Debian's ``docker-compose`` v1 is
installed, its ``config`` must accept both file combinations as well.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cgpo.cli import build_parser
from cgpo.services.common.settings import variables

REPO = Path(__file__).resolve().parents[1]
DEFAULT = re.compile(r"^\$\{(CGPO_[A-Z0-9_]+):-(.*)\}$")
GATEWAYS = {"judges": "judges", "llm-judges": "judges", "rm": "rm"}
WORKERS = {"judges-worker": "judges", "llm-judges-worker": "judges", "rm-worker": "rm"}
GPU_SERVICES = {"llm-judges-worker", "rm-worker", "trainer"}


def load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def resolve(value: object) -> str:
    """A compose value with ``${VAR:-default}`` replaced by its default."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))


def known_variables() -> set[str]:
    return set(variables())


@pytest.fixture(scope="module")
def compose() -> dict:
    return load("docker-compose.yml")


@pytest.fixture(scope="module")
def cpu() -> dict:
    return load("docker-compose.cpu.yml")


def test_the_stack_has_every_service(compose):
    assert set(compose["services"]) == {"redis", *GATEWAYS, *WORKERS, "trainer"}
    redis = compose["services"]["redis"]
    assert "--appendonly" in redis["command"] and redis["healthcheck"]["test"][-1] == "ping"
    assert set(compose["volumes"]) >= {"redis-data", "runs"}


def test_gateways_publish_a_port_and_are_healthy_only_when_ready(compose):
    for name, service in GATEWAYS.items():
        spec = compose["services"][name]
        assert spec["command"][:3] == ["cgpo", service, "serve"] and "--port" in spec["command"]
        port = spec["command"][spec["command"].index("--port") + 1]
        host, container = resolve(spec["ports"][0]).split(":")
        assert container == port and host.isdigit()
        assert any("/readyz" in part for part in spec["healthcheck"]["test"]) and f":{port}/readyz" in str(
            spec["healthcheck"]["test"])
        assert spec["depends_on"]["redis"]["condition"] == "service_healthy"
    ports = [resolve(compose["services"][n]["ports"][0]).split(":")[0] for n in GATEWAYS]
    assert len(set(ports)) == len(ports)


def test_workers_share_their_gateways_queue_and_gpu_services_reserve_a_gpu(compose):
    services = compose["services"]
    for worker, service in WORKERS.items():
        gateway = worker.removesuffix("-worker")
        assert services[worker]["command"] == ["cgpo", service, "worker"]
        assert services[worker]["environment"].get("CGPO_QUEUE") == services[gateway]["environment"].get("CGPO_QUEUE")
        enabled = "CGPO_JUDGES_ENABLED"
        if service == "judges":  # a gateway validates against the judges its workers serve
            assert (resolve(services[worker]["environment"][enabled])
                    == resolve(services[gateway]["environment"][enabled]))
        assert services[worker]["healthcheck"] == {"disable": True}
    assert resolve(services["judges-worker"]["scale"]) == "2"
    for name in GPU_SERVICES:
        devices = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    assert services["trainer"]["profiles"] == ["train"]
    assert {"judges", "rm"} <= set(services["trainer"]["depends_on"])


def test_every_command_is_a_valid_cgpo_invocation(compose, cpu):
    parser = build_parser()
    for spec in [*compose["services"].values(), *cpu["services"].values()]:
        command = spec.get("command")
        if not command or command[0] != "cgpo":
            continue
        parser.parse_args([resolve(part) for part in command[1:]])


def test_every_setting_is_a_known_variable_with_an_overridable_default(compose, cpu):
    known = known_variables()
    fixed = {"CGPO_QUEUE", "CGPO_JUDGES_LLM_BACKEND", "CGPO_RM_DEVICE", "CGPO_RM_DTYPE"}  # part of the topology
    for doc in (compose, cpu):
        for name, spec in doc["services"].items():
            for var, value in (spec.get("environment") or {}).items():
                assert var in known, f"{name}: {var} is not a setting"
                if var in fixed and doc is cpu:
                    continue
                if var != "CGPO_QUEUE":
                    match = DEFAULT.match(str(value))
                    # the host variable is the setting's own name, or CGPO_LLM_* for the LLM-judge deployment
                    assert match and match.group(1) in (var, var.replace("CGPO_", "CGPO_LLM_")), \
                        f"{name}: {var}={value!r} needs ${{{var}:-default}}"


def test_the_cpu_override_replaces_each_gpu_service_with_a_cpu_twin(compose, cpu):
    services = cpu["services"]
    for name in GPU_SERVICES:
        assert services[name] == {"profiles": ["gpu"]}
        twin = services[f"{name}-cpu"]
        assert twin["command"][:3] == compose["services"][name]["command"][:3]
        assert "deploy" not in twin and twin["build"]["args"]["EXTRAS"].startswith("models")
    assert services["rm-worker-cpu"]["environment"]["CGPO_RM_DEVICE"] == "cpu"
    assert services["llm-judges-worker-cpu"]["environment"]["CGPO_JUDGES_LLM_BACKEND"] == "hf"
    assert services["trainer-cpu"]["profiles"] == ["train"]


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile.cpu", "docker/Dockerfile.cuda"])
def test_images_are_pinned_run_as_a_user_and_check_readiness(dockerfile):
    text = (REPO / dockerfile).read_text()
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert ":" in base and not base.endswith(":latest")
    assert re.search(r"^USER (?!root)\S+", text, re.M)
    assert "HEALTHCHECK" in text and "/readyz" in text
    assert "-c /tmp/requirements-cpu.txt" in text
    pins = (REPO / "docker/requirements-cpu.txt").read_text().split()
    assert any(p.startswith("fastapi==") for p in pins) and any(p.startswith("redis==") for p in pins)


def test_the_trainer_config_of_the_stack_loads_and_uses_the_services(compose):
    from cgpo.trainer.config import load_config

    config = load_config(REPO / "configs" / "compose.yaml")
    urls = {t.judge_service.url for t in config.tasks} | {t.reward_model.url for t in config.tasks}
    assert urls == {"http://judges:8000", "http://llm-judges:8000", "http://rm:8000"}
    assert set(compose["services"]) >= {u.split("//")[1].split(":")[0] for u in urls}


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose v1 is not installed")
@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.cpu.yml"]])
def test_docker_compose_accepts_the_files(files):
    args = [a for f in files for a in ("-f", f)]
    done = subprocess.run(["docker-compose", *args, "config", "-q"], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_the_code_judge_worker_can_build_its_sandbox(compose):
    """Strict sandbox: root with CAP_SYS_ADMIN and mounts allowed, or every code item is an error."""
    worker = compose["services"]["judges-worker"]
    assert "code" in resolve(worker["environment"]["CGPO_JUDGES_ENABLED"]).split(",")
    assert resolve(worker["environment"]["CGPO_JUDGES_CODE_SANDBOX"]) == "strict"
    assert worker["user"] == "root" and worker["cap_add"] == ["SYS_ADMIN"]
    assert {"seccomp=unconfined", "apparmor=unconfined", "systempaths=unconfined"} <= set(worker["security_opt"])
