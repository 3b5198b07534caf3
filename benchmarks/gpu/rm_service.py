"""Reward-model service on the GPU: items/s served against the same model in-process and a naive server.

The reward model is SmolLM2-135M's layers with a one-output score head (``common.build_model``, random
weights; bf16 on cuda, the dry run's toy model in fp32 on the CPU). Items are distinct (prompt, response)
pairs that encode to exactly 256 tokens (toy: 32) with the chat template, 8 responses per prompt
(benchmarks/bench_rm.py's ``Workload``). Every figure is measured once: a served one in a 7 s window after
2 s of load (toy: 2 s after 1 s), an in-process one for 5 s after a warm-up batch (toy: 2 s):

- ``encode``: ``RewardModel.encode`` alone on one thread -- the CPU work a served item costs before its
  forward pass, which the in-process figures leave out;
- ``in_process_b1`` / ``_b64`` / ``_b256`` (toy 1 / 4 / 8): ``RewardModel.score`` on consecutive batches
  of pre-encoded items, one forward pass per batch (token budget = 256 items x 256 tokens);
- ``embedded_x1`` / ``_x8``: ``cgpo rm serve`` alone, 64 closed-loop aiohttp clients (toy: 4) posting
  1- or 8-item requests to ``/v1/score``; the service encodes the items and batches up to 256 of them
  (``CGPO_BATCH_MAX_ITEMS``, same token budget). With 64 one-item clients no batch exceeds 64 items,
  hence the in-process batch-64 figure beside it;
- ``queue_x1`` / ``_x8``: the same through redis-server + ``cgpo rm serve`` + one ``cgpo rm worker``
  (skipped when ``redis-server`` is not on PATH);
- ``naive_x1``: bench_rm's naive server (OpenRLHF ``serve_rm``'s design: tokenize and run the forward
  inside each request, never batching requests together) on ``/get_reward``, the same items sent as
  chat-formatted texts, 64 one-item clients.

Ratios: each served figure over in-process batch 256 (target >= 0.85) and the one-item served figures
over the naive server. Each stack's rewards for three items are first checked against the in-process
ones (this also waits until a queue worker has loaded its model). The three stacks start together,
before any window, while the items are built. Anchor (2026-11, H100, a 135M reward model): in-process
batch 1 49 items/s, batch 256 2,480 items/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

from benchmarks.gpu.common import Budget, Context, build_model, guarded, has, parameters

MODEL_NAME = "bench"
ANCHOR = {"source": "2026-11, H100, 135M reward model", "in_process_b1": 49.0, "in_process_b256": 2480.0}
TARGET_VS_IN_PROCESS = 0.85
MODES = ("embedded", "queue", "naive")


class Settings:
    """Sizes of the run: full on the GPU, toy in the dry run."""

    def __init__(self, ctx: Context) -> None:
        self.tokens = ctx.size(256, 32)
        self.clients = ctx.size(64, 4)
        self.big_batch = ctx.size(256, 8)
        self.batches = (1, self.clients, self.big_batch)
        self.per_request = (1, 8)
        self.items = 2 * self.clients * max(self.per_request)  # two distinct bodies per client
        self.max_batch_tokens = max(2048, self.big_batch * self.tokens)  # 2048: CGPO_RM_MAX_LENGTH's default
        self.warmup_s = ctx.size(2.0, 1.0)
        self.duration_s = ctx.size(7.0, 2.0)
        self.in_process_s = ctx.size(5.0, 2.0)
        self.budget_s = ctx.size(100.0, 240.0)

    def env(self, ctx: Context, model: str) -> dict[str, str]:
        """Environment of every service process: the run's device and dtype, batches of up to
        ``big_batch`` items under the in-process token budget, no request timing out in a backlog."""
        from benchmarks.bench_rm import NAIVE_DEVICE_ENV, NAIVE_DTYPE_ENV, NAIVE_PATH_ENV
        from benchmarks.stack import service_env

        return service_env(CGPO_RM_DEVICE=ctx.device, CGPO_RM_DTYPE=ctx.dtype_name,
                           CGPO_BATCH_MAX_ITEMS=str(self.big_batch), CGPO_BATCH_MAX_WAIT_MS="0",
                           CGPO_RM_MAX_BATCH_TOKENS=str(self.max_batch_tokens), CGPO_REQUEST_TIMEOUT_S="600",
                           OMP_NUM_THREADS=str(ctx.size(4, 1)), TOKENIZERS_PARALLELISM="false",
                           **{NAIVE_PATH_ENV: model, NAIVE_DTYPE_ENV: ctx.dtype_name, NAIVE_DEVICE_ENV: ctx.device})


# ---------------------------------------------------------------- the stacks


def start_stack(mode: str, env: dict[str, str], model: str, log: IO[bytes]) -> Any:
    """One deployment, ready to serve: ``embedded``, ``queue`` (Redis + gateway + one worker) or ``naive``."""
    from benchmarks.stack import Stack

    spec = ["--model", f"{MODEL_NAME}={model}"]
    if mode == "naive":
        cmd = [sys.executable, "-m", "uvicorn", "benchmarks.bench_rm:naive_app", "--factory", "--host",
               "127.0.0.1", "--log-level", "warning"]
        return Stack(cmd, None, env, raw_gateway=True, log=log, ready_timeout_s=120)
    if mode == "embedded":
        return Stack(["rm", "serve", *spec], None, env, log=log, ready_timeout_s=120)
    return Stack(["rm", "serve", *spec], ["rm", "worker", *spec], env, workers=1, redis=True, log=log,
                 ready_timeout_s=120)


def why_not(mode: str) -> str | None:
    """Why a stack cannot run here, or None."""
    if not has("aiohttp"):
        return "aiohttp not installed (the load generator; pip install -e '.[bench]')"
    if mode == "queue" and shutil.which("redis-server") is None:
        return "redis-server not on PATH"
    return None


class Stacks:
    """The three deployments, started together in threads (each waits for its own readiness)."""

    def __init__(self, ctx: Context, s: Settings, model: str) -> None:
        self.log = (ctx.work / "rm_service.log").open("w+b")
        self.pool = ThreadPoolExecutor(len(MODES))
        env = s.env(ctx, model)
        self.started: dict[str, Future[Any]] = {}
        self.startup_s: dict[str, float] = {}
        for mode in MODES:
            if why_not(mode) is None:
                self.started[mode] = self.pool.submit(self._start, mode, env, model)

    def _start(self, mode: str, env: dict[str, str], model: str) -> Any:
        tic = time.perf_counter()
        stack = start_stack(mode, env, model, self.log)
        self.startup_s[mode] = round(time.perf_counter() - tic, 1)
        return stack

    def wait(self) -> None:
        """Until every stack is ready or has failed (each check then reports its own failure)."""
        for future in self.started.values():
            with contextlib.suppress(Exception):
                future.result()

    def get(self, mode: str) -> Any:
        """The ready stack (raises what stopped it from starting)."""
        return self.started[mode].result()

    def close(self, mode: str) -> None:
        future = self.started.get(mode)
        if future is not None and future.done() and future.exception() is None:
            future.result().close(grace_s=0)

    def close_all(self) -> None:
        self.wait()  # a start still under way: its processes are ended too
        for mode in self.started:
            self.close(mode)
        self.pool.shutdown(wait=True)
        self.log.close()

    def log_tail(self, chars: int = 3000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-chars:].decode(errors="replace")


# ---------------------------------------------------------------- measurements


def chat_text(tokenizer: Any, item: dict[str, Any]) -> str:
    """An item as the pre-formatted text OpenRLHF's protocol sends (what ``RewardModel.encode`` reads)."""
    return tokenizer.apply_chat_template([{"role": "user", "content": item["prompt"]},
                                          {"role": "assistant", "content": item["response"]}], tokenize=False)


def measure_encode(rm: Any, items: list[dict[str, Any]], duration_s: float) -> dict[str, Any]:
    """items/s of ``RewardModel.encode`` (chat template + tokenizer) on this process's one thread."""
    done, tic = 0, time.perf_counter()
    while time.perf_counter() - tic < duration_s or done < len(items) // 4:
        item = items[done % len(items)]
        rm.encode(item["prompt"], item["response"])
        done += 1
    elapsed = time.perf_counter() - tic
    return {"items_per_s": round(done / elapsed, 1), "ms_per_item": round(1000 * elapsed / done, 3)}


def measure_in_process(ctx: Context, rm: Any, seqs: list[tuple[int, ...]], batch: int,
                       duration_s: float) -> dict[str, Any]:
    """bench_rm's in-process figure: ``rm.score`` on consecutive distinct batches, GPU synchronized."""
    from benchmarks.bench_rm import in_process

    passes = rm.forward_passes
    rm.score(seqs[:batch])  # the first forward at this shape: kernels chosen, memory allocated
    per_batch = rm.forward_passes - passes
    return {**in_process(rm, seqs, batch, duration_s), "forward_passes_per_batch": per_batch}


def measure_served(stack: Any, path: str, bodies: list[bytes], per_request: int, s: Settings) -> dict[str, Any]:
    """items/s of ``s.clients`` closed-loop clients over the window; the backlog dies with the stack."""
    from benchmarks.stack import CpuMeter, closed_loop

    meter = CpuMeter({"loadgen": [os.getpid()], **stack.pids()})
    result = asyncio.run(closed_loop(stack.base, path, bodies, per_request, s.clients, s.warmup_s, s.duration_s,
                                     meter=meter, drain=False, request_timeout_s=600))
    if result.completions == 0:
        raise RuntimeError(f"no request completed in the {s.duration_s:.0f} s window on {path}")
    return {**result.as_dict(), "clients": s.clients, "items_per_request": per_request}


def check_stack(stack: Any, rm: Any, items: list[dict[str, Any]], texts: list[str] | None, tol: float) -> None:
    """The stack scores three items as the in-process model does (bench_rm's ``check_rewards``)."""
    from benchmarks.bench_rm import check_rewards

    check_rewards(stack.base, rm, items[:3], texts[:3] if texts is not None else None, tol=tol)


class Bench:
    def __init__(self, ctx: Context, s: Settings, rm: Any, items: list[dict[str, Any]], stacks: Stacks,
                 budget: Budget) -> None:
        from benchmarks.bench_rm import reward_bodies, score_bodies

        self.ctx, self.s, self.rm, self.items, self.stacks, self.budget = ctx, s, rm, items, stacks, budget
        self.seqs = [rm.encode(i["prompt"], i["response"]).ids for i in items]
        self.texts = [chat_text(rm.tokenizer, i) for i in items[: 2 * s.clients]]
        self.bodies = {k: score_bodies(items, k) for k in s.per_request}
        self.naive_bodies = reward_bodies(self.texts)
        self.tol = 1e-3 if ctx.dtype_name == "float32" else 5e-2  # bf16 scores move with batch composition
        self.window_s = s.warmup_s + s.duration_s

    def in_process(self, batch: int) -> dict[str, Any]:
        return self.budget.run(self.s.in_process_s + 2, lambda: measure_in_process(
            self.ctx, self.rm, self.seqs, batch, self.s.in_process_s))

    def served(self, mode: str, per_request: int) -> dict[str, Any]:
        if why := why_not(mode):
            return {"skipped": why}

        def run() -> dict[str, Any]:
            stack = self.stacks.get(mode)
            if mode == "naive":
                check_stack(stack, self.rm, [], self.texts, self.tol)
                return measure_served(stack, "/get_reward", self.naive_bodies, 1, self.s)
            check_stack(stack, self.rm, self.items, None, self.tol)
            return measure_served(stack, "/v1/score", self.bodies[per_request], per_request, self.s)

        return self.budget.run(self.window_s + 3, run)


def ratio(num: dict[str, Any], den: dict[str, Any]) -> float | None:
    a, b = num.get("items_per_s"), den.get("items_per_s")
    return round(a / b, 3) if a and b else None


def ratios(checks: dict[str, Any], s: Settings) -> dict[str, Any]:
    """Served over in-process batch ``big_batch`` (with the target) and one-item served over naive."""
    big = checks.get(f"in_process_b{s.big_batch}", {})
    out: dict[str, Any] = {}
    for mode in ("embedded", "queue"):
        for k in s.per_request:
            value = ratio(checks.get(f"{mode}_x{k}", {}), big)
            out[f"{mode}_x{k}_vs_in_process_b{s.big_batch}"] = {
                "label": f"{mode} x{k} / in-process batch {s.big_batch}", "value": value,
                "target": f">= {TARGET_VS_IN_PROCESS}", "met": None if value is None else value >= TARGET_VS_IN_PROCESS}
        out[f"{mode}_x1_vs_naive"] = {"label": f"{mode} x1 / naive x1",
                                      "value": ratio(checks.get(f"{mode}_x1", {}), checks.get("naive_x1", {}))}
    return out


def summary(checks: dict[str, Any], rat: dict[str, Any], s: Settings) -> list[tuple[str, Any, str]]:
    def rate(key: str) -> Any:
        return checks.get(key, {}).get("items_per_s", "-")

    b1, bc, bb = (f"in_process_b{b}" for b in s.batches)
    rows: list[tuple[str, Any, str]] = [
        ("encode (chat template + tokenizer), 1 thread", rate("encode"), "items/s"),
        (f"in-process batch 1 (2026-11 H100: {ANCHOR['in_process_b1']:,.0f})", rate(b1), "items/s"),
        (f"in-process batch {s.clients}", rate(bc), "items/s"),
        (f"in-process batch {s.big_batch} (2026-11 H100: {ANCHOR['in_process_b256']:,.0f})", rate(bb), "items/s"),
    ]
    for mode, what in (("embedded", "embedded"), ("queue", "Redis queue + 1 worker")):
        for k in s.per_request:
            rows.append((f"served {what}, {s.clients} clients x {k} item(s)", rate(f"{mode}_x{k}"), "items/s"))
    rows.append((f"naive per-request server, {s.clients} clients x 1 item", rate("naive_x1"), "items/s"))
    for r in rat.values():
        met = "" if r.get("met") is None else ", met" if r["met"] else ", NOT met"
        unit = f"ratio (target {r['target']}{met})" if "target" in r else "ratio"
        rows.append((r["label"], "-" if r["value"] is None else r["value"], unit))
    return rows


# ---------------------------------------------------------------- the part


def load_reward_model(ctx: Context, path: str, s: Settings) -> Any:
    from cgpo.services.rm.model import RewardModel

    rm = RewardModel(MODEL_NAME, path, device=ctx.device, dtype=ctx.dtype_name, max_batch_tokens=s.max_batch_tokens)
    rm.load()
    return rm


def build_items(rm: Any, s: Settings) -> list[dict[str, Any]]:
    from benchmarks.bench_rm import Workload

    return Workload(rm).pairs(s.items, s.tokens, per_prompt=8)


def run(ctx: Context) -> dict[str, Any]:
    """Every figure of the module docstring; a check that fails or is skipped says why, the others run."""
    s = Settings(ctx)
    budget = Budget(s.budget_s)
    path = build_model(ctx, "rm", kind="sequence-classification")
    stacks = Stacks(ctx, s, str(path))
    checks: dict[str, Any] = {}
    try:
        tic = time.perf_counter()
        rm = load_reward_model(ctx, str(path), s)
        items = build_items(rm, s)
        prepare_s = round(time.perf_counter() - tic, 1)
        bench = Bench(ctx, s, rm, items, stacks, budget)
        stacks.wait()  # no figure is taken while service processes start up on the same cores
        guarded("encode", lambda: measure_encode(rm, items, min(2.0, s.duration_s)), checks)
        for b in s.batches:
            guarded(f"in_process_b{b}", lambda b=b: bench.in_process(b), checks)
        for mode in ("embedded", "naive", "queue"):
            for k in (1,) if mode == "naive" else s.per_request:
                guarded(f"{mode}_x{k}", lambda mode=mode, k=k: bench.served(mode, k), checks)
            stacks.close(mode)
        failed = any("error" in v for v in checks.values())
        log_tail = stacks.log_tail() if failed else ""
    finally:
        stacks.close_all()
    rat = ratios(checks, s)
    result: dict[str, Any] = {
        "model": {"parameters": parameters(path), "tokens_per_item": s.tokens, "dtype": ctx.dtype_name},
        "settings": {"clients": s.clients, "batch_max_items": s.big_batch, "max_batch_tokens": s.max_batch_tokens,
                     "warmup_s": s.warmup_s, "duration_s": s.duration_s, "items": s.items},
        "startup_s": stacks.startup_s, "prepare_s": prepare_s, "checks": checks, "ratios": rat, "anchor": ANCHOR,
        "summary": summary(checks, rat, s)}
    if log_tail:
        result["service_log_tail"] = log_tail
    return result
