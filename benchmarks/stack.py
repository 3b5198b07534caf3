"""What the service benchmarks share: ports, percentiles, a process stack, CPU accounting, closed-loop load.

`Stack` starts the processes of one deployment (an optional redis-server, a
gateway, workers) on loopback as separate process groups, waits for
``/readyz`` and always tears them down (SIGTERM, then SIGKILL after a grace
period). `CpuMeter` reads per-process and whole-machine CPU time from
``/proc`` so a benchmark can say where the time went. `closed_loop` drives
``clients`` aiohttp clients that each post back to back and measures
steady-state items/s from completion times.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

REPO = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(x * 1000 for x in samples_s)
    return {"p50_ms": round(statistics.median(ms), 3), "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 3)}


def service_env(**extra: str) -> dict[str, str]:
    """This environment without any ``CGPO_*`` variable, with the repository importable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CGPO_")}
    # An installed cgpo (a --target install on a bare GPU machine) stays ahead of the checkout's folder.
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO)]
    env.update(PYTHONPATH=os.pathsep.join([*paths, str(REPO)]), CGPO_LOG_LEVEL="warning")
    env.update(extra)
    return env


class Stack:
    """redis-server + gateway + workers as separate processes (each in its own process group).

    ``gateway`` and ``worker`` are argument lists for ``python -m cgpo`` (e.g. ``["rm", "serve"]``), or
    a full command when ``raw_gateway`` is set. ``worker_env`` is added to the workers' environment only
    (e.g. their torch threads). With ``log`` the processes' stderr goes there instead of this terminal.
    """

    def __init__(self, gateway: Sequence[str], worker: Sequence[str] | None, env: dict[str, str], *,
                 workers: int = 1, redis: bool = False, worker_env: dict[str, str] | None = None,
                 raw_gateway: bool = False, ready_path: str = "/readyz", ready_timeout_s: float = 60.0,
                 log: IO[bytes] | None = None) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.roles: list[str] = []
        self.log = log
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(env)
        try:
            if redis:
                redis_port = free_port()
                self._spawn("redis", [shutil.which("redis-server") or "redis-server", "--port", str(redis_port),
                                      "--save", "", "--appendonly", "no"], env)
                env["CGPO_REDIS_URL"] = f"redis://127.0.0.1:{redis_port}/0"
            cmd = list(gateway) if raw_gateway else [sys.executable, "-m", "cgpo", *gateway]
            self._spawn("gateway", [*cmd, "--port", str(self.port)], env)
            for _ in range(workers if redis and worker else 0):
                self._spawn("worker", [sys.executable, "-m", "cgpo", *worker], {**env, **(worker_env or {})})
            self._wait_ready(ready_path, ready_timeout_s)
        except BaseException:
            self.close()
            raise

    def _spawn(self, role: str, cmd: list[str], env: dict[str, str]) -> None:
        self.procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=self.log,
                                           start_new_session=True, preexec_fn=_die_with_parent))
        self.roles.append(role)

    def _wait_ready(self, path: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            dead = [(r, p.returncode) for r, p in zip(self.roles, self.procs) if p.poll() is not None]
            if dead:
                raise RuntimeError(f"service process(es) exited during start-up: {dead}")
            try:
                if httpx.get(f"{self.base}{path}", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError("service did not become ready")

    def pids(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for role, proc in zip(self.roles, self.procs):
            out.setdefault(role, []).append(proc.pid)
        return out

    def close(self, grace_s: float = 10.0) -> None:
        """SIGTERM every process group (workers first), SIGKILL what is left after ``grace_s``."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.procs.clear()
        self.roles.clear()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()  # resolved here: the child between fork and exec must not import anything


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM it when the benchmark dies, even by SIGKILL."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# ---------------------------------------------------------------- CPU accounting


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, over all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal
    return (total - idle) / CLK_TCK, total / CLK_TCK


class CpuMeter:
    """CPU cores used by named groups of processes between `start` and `stop`, and by the rest of the machine."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self._t0 = 0.0
        self._proc0: dict[str, float] = {}
        self._machine0 = (0.0, 0.0)

    def _sample(self) -> dict[str, float]:
        return {name: sum(process_cpu_s(p) for p in pids) for name, pids in self.groups.items()}

    def start(self) -> None:
        self._t0, self._proc0, self._machine0 = time.perf_counter(), self._sample(), machine_cpu_s()

    def stop(self) -> dict[str, float]:
        """Cores used (CPU-seconds per second) by each group, ``others`` (everything else) and ``idle``."""
        elapsed = time.perf_counter() - self._t0
        proc1, (busy1, total1) = self._sample(), machine_cpu_s()
        busy0, total0 = self._machine0
        used = {name: (proc1[name] - self._proc0[name]) / elapsed for name in self.groups}
        cores = (total1 - total0) / elapsed
        busy = (busy1 - busy0) / elapsed
        out = {name: round(v, 2) for name, v in used.items()}
        out["others"] = round(max(0.0, busy - sum(used.values())), 2)
        out["idle"] = round(max(0.0, cores - busy), 2)
        return out


# ---------------------------------------------------------------- closed-loop load


@dataclass
class LoadResult:
    items_per_s: float
    completions: int
    """Responses completed inside the measurement window."""
    window_s: float
    """Seconds between the two completions the rate is measured between."""
    p50_ms: float
    p95_ms: float
    cpu: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"items_per_s": round(self.items_per_s, 2), "completions": self.completions,
                "window_s": round(self.window_s, 2), "p50_ms": self.p50_ms, "p95_ms": self.p95_ms,
                "cpu_cores": self.cpu}


def steady_rate(done: list[tuple[float, int]], start_s: float, end_s: float) -> tuple[float, float]:
    """(items/s, seconds) between two completions: the last one at or before ``start_s`` and the last one
    at or before ``end_s``, counting the items completed after the first, up to and including the second.

    Batched servers answer in bursts; measuring from the end of one burst to the end of another counts
    whole bursts only, so the rate has no edge bias however few bursts the window holds.
    """
    done = sorted(done)
    before = [t for t, _ in done if t <= start_s]
    inside = [(t, n) for t, n in done if start_s < t <= end_s]
    if not inside:
        return 0.0, 0.0
    if before:
        t_a = before[-1]
        counted = inside
    else:  # no completion before the window: start at the first one inside it
        t_a, counted = inside[0][0], inside[1:]
    t_b = inside[-1][0]
    if t_b <= t_a:
        return 0.0, 0.0
    return sum(n for _, n in counted) / (t_b - t_a), t_b - t_a


async def closed_loop(base: str, path: str, bodies: Sequence[bytes], items_per_body: int, clients: int,
                      warmup_s: float, duration_s: float, *, meter: CpuMeter | None = None, drain: bool = True,
                      check: Callable[[int, bytes], None] | None = None,
                      request_timeout_s: float = 1800.0) -> LoadResult:
    """``clients`` concurrent clients posting ``bodies`` (round robin) back to back.

    The rate is measured over ``[warmup_s, warmup_s + duration_s]`` (see `steady_rate`). With ``drain``
    the clients then finish their requests in flight (the server is left idle); without, they are
    cancelled (the server may still be working on them: close it). ``check(status, body)`` may raise on a
    bad answer; by default anything but 200 raises.
    """
    import aiohttp

    if len(bodies) < 2 * clients:
        raise ValueError("need at least two bodies per client, so no two requests in flight are the same")
    done: list[tuple[float, int]] = []
    latencies: list[tuple[float, float]] = []
    t0 = time.perf_counter()
    stop_at = t0 + warmup_s + duration_s
    headers = {"Content-Type": "application/json"}

    def default_check(status: int, body: bytes) -> None:
        if status != 200:
            raise RuntimeError(f"{status}: {body[:300]!r}")

    check = check or default_check

    async def one_client(k: int, session: aiohttp.ClientSession) -> None:
        i = k
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            async with session.post(path, data=bodies[i % len(bodies)], headers=headers) as response:
                body = await response.read()
                check(response.status, body)
            end = time.perf_counter()
            done.append((end - t0, items_per_body))
            latencies.append((end - t0, end - start))
            i += clients

    async def window() -> None:
        await asyncio.sleep(max(0.0, warmup_s - (time.perf_counter() - t0)))
        if meter:
            meter.start()
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        if meter:
            cpu.update(meter.stop())

    cpu: dict[str, float] = {}
    timeout = aiohttp.ClientTimeout(total=request_timeout_s)
    async with aiohttp.ClientSession(base, connector=aiohttp.TCPConnector(limit=clients),
                                     timeout=timeout) as session:
        tasks = [asyncio.create_task(one_client(k, session)) for k in range(clients)]
        await window()
        if drain:
            await asyncio.gather(*tasks)
        else:
            for task in tasks:
                if not task.done():
                    task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            errors = [r for r in results if isinstance(r, Exception) and not isinstance(r, asyncio.CancelledError)]
            if errors:
                raise errors[0]
    rate, span = steady_rate(done, warmup_s, warmup_s + duration_s)
    inside = [lat for t, lat in latencies if warmup_s < t <= warmup_s + duration_s] or [lat for _, lat in latencies]
    pct = percentiles(inside) if inside else {"p50_ms": 0.0, "p95_ms": 0.0}
    n_inside = sum(1 for t, _ in done if warmup_s < t <= warmup_s + duration_s)
    return LoadResult(rate, n_inside, span, pct["p50_ms"], pct["p95_ms"], cpu)
