"""Judge-service settings (``CGPO_JUDGES_*``), validated in one place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from cgpo.services.common.settings import load_env

RULE_JUDGES = ("math", "code", "instructions", "refusal")
LLM_JUDGES = ("false_refusal", "factuality", "safety")


@dataclass(frozen=True)
class JudgeConfig:
    enabled: tuple[str, ...] = ()
    """Judges this process serves (CGPO_JUDGES_ENABLED, comma-separated). Empty: every rule judge, plus the
    LLM judges when an LLM judge model is set."""
    processes: int = 0
    """Worker processes of each of the math, instructions and code judges (CGPO_JUDGES_PROCESSES);
    0 = one per CPU core."""
    rule_timeout_s: float = 5.0
    """Hard wall-clock limit of one item of a rule judge in its worker process
    (CGPO_JUDGES_RULE_TIMEOUT_S): all of an `instructions` item (every instruction, every loose
    variant), or the metadata checks, answer extraction and exact arithmetic of a `math` item. Past
    it the worker is killed and the item answers `error`. The checks are linear in the response: an
    IFEval item takes ~0.3 ms, a 100 KB degenerate one under a second; 8 MiB ones can exceed it."""
    math_timeout_s: float = 5.0
    """Hard wall-clock limit of one math equivalence check (math-verify) (CGPO_JUDGES_MATH_TIMEOUT_S)."""
    code_timeout_s: float = 5.0
    """Wall-clock limit of one sandboxed program (CGPO_JUDGES_CODE_TIMEOUT_S)."""
    code_memory_mb: int = 512
    """Address-space limit of one sandboxed program (CGPO_JUDGES_CODE_MEMORY_MB)."""
    code_sandbox: Literal["strict", "weak"] = "strict"
    """How the code judge contains programs (CGPO_JUDGES_CODE_SANDBOX): `strict` runs them only where
    every kernel layer is in place (root with CAP_SYS_ADMIN: own uids, mount/network/PID namespaces,
    minimal root, seccomp) and otherwise answers `error: sandbox_unavailable` for every item; `weak`
    runs them with whatever the machine allows (development only)."""
    refusal_mode: Literal["must_not_refuse", "must_refuse"] = "must_not_refuse"
    """Default mode of the `refusal` judge when an item's metadata names none (CGPO_JUDGES_REFUSAL_MODE)."""
    llm_model: str | None = None
    """Local path or model id of the LLM judge model (CGPO_JUDGES_LLM_MODEL). Unset: no LLM judges."""
    llm_backend: Literal["hf", "vllm"] = "hf"
    """Engine of the LLM judges (CGPO_JUDGES_LLM_BACKEND): transformers, or vLLM on GPUs."""
    llm_batch_size: int = 16
    """Prompts per forward pass of the LLM judges (CGPO_JUDGES_LLM_BATCH_SIZE)."""

    def __post_init__(self) -> None:
        known = RULE_JUDGES + LLM_JUDGES
        unknown = [n for n in self.enabled if n not in known]
        if unknown:
            raise ValueError(f"CGPO_JUDGES_ENABLED names unknown judges {unknown}; known: {list(known)}")
        llm = [n for n in self.enabled if n in LLM_JUDGES]
        if llm and not self.llm_model:
            raise ValueError(f"judges {llm} need CGPO_JUDGES_LLM_MODEL (the judge model's path or id)")
        if self.llm_backend not in ("hf", "vllm"):
            raise ValueError("CGPO_JUDGES_LLM_BACKEND must be 'hf' or 'vllm'")
        if self.refusal_mode not in ("must_not_refuse", "must_refuse"):
            raise ValueError("CGPO_JUDGES_REFUSAL_MODE must be 'must_not_refuse' or 'must_refuse'")
        if self.code_sandbox not in ("strict", "weak"):
            raise ValueError("CGPO_JUDGES_CODE_SANDBOX must be 'strict' or 'weak'")
        for name in ("rule_timeout_s", "math_timeout_s", "code_timeout_s", "code_memory_mb", "llm_batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"CGPO_JUDGES_{name.upper()} must be > 0")
        if self.processes < 0:
            raise ValueError("CGPO_JUDGES_PROCESSES must be >= 0")

    @property
    def names(self) -> tuple[str, ...]:
        if self.enabled:
            return self.enabled
        return RULE_JUDGES + (LLM_JUDGES if self.llm_model else ())

    @property
    def process_count(self) -> int:
        return self.processes or os.cpu_count() or 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> JudgeConfig:
        return load_env(cls, "CGPO_JUDGES_", env, **overrides)
