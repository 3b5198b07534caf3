"""The ``code`` judge: the response's Python passes every unit test (docs/method.md §2).

Tests come from the prompt's metadata, in one of two shapes:
  * ``unit_tests``: assert statements (MBPP style), a list of strings or one string,
    with an optional ``entry_point``;
  * ``test`` + ``entry_point``: HumanEval style, ``test`` defines ``check(candidate)``
    and the judge calls ``check(<entry_point>)``.
A declared ``entry_point`` must be a function of the program (else ``fail``,
``missing_function``) and is the only program name that may shadow a builtin in
the tests: a task whose function is named like one (``pow``, ``sorted``) needs it.
Helpers the tests rely on belong in the test source, where they override the
program's names. Programs run in ``cgpo.services.judges.sandbox`` (one fork-server
zygote per worker) as ``__main__`` with an empty stdin, in a process of their own;
the tests run in a separate harness process that sees the program's names as
proxies and compares plain-data copies of its results (so always-equal objects,
str/int subclasses, patched builtins, fake modules and exits before the tests ran
do not pass). A program that times out, breaks a limit or takes its sandbox down
*fails* (the code is wrong); ``error`` is kept for malformed metadata, failures of
the sandbox itself, and a strict sandbox this machine cannot provide
(``sandbox_unavailable``, the same for every item). Every string in a verdict is
valid UTF-8: lone surrogates become U+FFFD.
"""

from __future__ import annotations

import dataclasses
import keyword
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from cgpo.services.common.schemas import Verdict
from cgpo.services.judges.base import Judge, Sample, errored, failed, passed
from cgpo.services.judges.sandbox import Isolation, Job, Limits, RunResult, SandboxPool

log = logging.getLogger(__name__)

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:^[ \t]*```[ \t]*$|\Z)", re.MULTILINE | re.DOTALL)
_PYTHON_TAGS = {"python", "py", "python3", "py3"}
_STDERR_TAIL = 1000  # chars of stderr kept in a verdict's detail
_TEXT_MAX = 300  # chars of a test or source line kept in detail
_STATUS_REASONS = {"timeout", "cpu", "memory", "file_size", "output_limit", "crashed", "exited", "missing_function",
                  "crashed_sandbox"}
SANDBOX_MODES = ("strict", "weak")
_SURROGATES = re.compile("[\ud800-\udfff]")


class MetadataError(ValueError):
    """The prompt's metadata does not describe runnable tests."""


def extract_code(response: str) -> str:
    """The first ```python/```py block, else the first fenced block, else the whole text.

    An unclosed fence (a response cut off by the token limit) runs to the end.
    """
    blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(response)]
    for tag, body in blocks:
        if tag in _PYTHON_TAGS:
            return body
    return blocks[0][1] if blocks else response


def build_tests(metadata: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """(test sources to run after the program, a label per source for verdict details)."""
    sources: list[str] = []
    labels: list[str] = []
    unit_tests, test, entry_point = metadata.get("unit_tests"), metadata.get("test"), metadata.get("entry_point")
    if entry_point is not None and (not isinstance(entry_point, str) or not entry_point.isidentifier()
                                    or keyword.iskeyword(entry_point)):
        raise MetadataError("`entry_point` must be the name of the function under test")
    if unit_tests is not None:
        if isinstance(unit_tests, str):
            unit_tests = [unit_tests]
        if not isinstance(unit_tests, list | tuple) or not all(isinstance(t, str) for t in unit_tests):
            raise MetadataError("`unit_tests` must be a string or a list of strings")
        sources += [t for t in unit_tests if t.strip()]
        labels += [t.strip() for t in unit_tests if t.strip()]
    if test is not None:
        if not isinstance(test, str) or not test.strip():
            raise MetadataError("`test` must be a non-empty string defining check(candidate)")
        if entry_point is None:
            raise MetadataError("`test` needs `entry_point`, the name of the function passed to check()")
        sources += [test, f"check({entry_point})"]
        labels += ["test (defines check)", f"check({entry_point})"]
    if not sources:
        raise MetadataError("metadata needs `unit_tests` (optionally with `entry_point`), or `test` with `entry_point`")
    return sources, labels


class CodeJudge(Judge):
    """Runs the extracted program against the tests; ``pass`` iff all of them pass."""

    name: ClassVar[str] = "code"
    description: ClassVar[str] = (
        "Runs the response's Python code (first ```python block, else first fenced block, else the "
        "whole text) against the prompt's unit tests in a sandbox; pass iff every test passes."
    )
    metadata_fields: ClassVar[dict[str, str]] = {
        "unit_tests": "assert statements run after the code: a list of strings, or one string",
        "test": "HumanEval style: source defining check(candidate) and the helpers it uses (with entry_point)",
        "entry_point": "the function under test: passed to check() with `test`; optional with `unit_tests`. "
                       "It must be defined, and it is the only program name that may shadow a builtin "
                       "(required when the function is named like one, e.g. pow)",
    }

    def __init__(
        self,
        *,
        timeout_s: float = 5.0,
        cpu_s: float | None = None,
        memory_mb: int = 512,
        max_processes: int = 16,
        max_file_bytes: int = 1 << 20,
        workers: int | None = None,
        isolation: Isolation | None = None,
        sandbox: Literal["strict", "weak"] = "strict",
    ) -> None:
        """``sandbox="strict"``: run programs only where every kernel layer of the sandbox is in place
        (else every item answers ``error: sandbox_unavailable``); ``"weak"``: with whatever this
        machine allows (development only)."""
        if sandbox not in SANDBOX_MODES:
            raise ValueError(f"sandbox must be one of {SANDBOX_MODES}, not {sandbox!r}")
        self.limits = Limits(timeout_s=timeout_s, cpu_s=cpu_s, memory_mb=memory_mb,
                             max_processes=max_processes, max_file_bytes=max_file_bytes)
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.sandbox = sandbox
        self.isolation = dataclasses.replace(isolation or Isolation(), strict=sandbox == "strict")
        self.unavailable: str | None = None
        """Why the strict sandbox cannot run here (set by ``setup``); None when programs run."""
        self._pool: SandboxPool | None = None
        self._setup_lock = threading.Lock()

    def setup(self) -> None:
        """Start one sandbox zygote per worker (idempotent; ``judge`` calls it if needed). In strict
        mode on a machine that cannot provide the sandbox, warn once and run nothing."""
        with self._setup_lock:
            if self._pool is None and self.unavailable is None:
                pool = SandboxPool(self.workers, self.limits, self.isolation)
                pool.start()
                if pool.unavailable is None:
                    self._pool = pool
                    return
                pool.close()
                self.unavailable = str(pool.unavailable)
                log.warning(
                    "code judge: no program will run, every item answers error/sandbox_unavailable: %s. "
                    "Run the judge worker as root with CAP_SYS_ADMIN and mounts allowed (docker-compose.yml's "
                    "judges-worker: user root, cap_add SYS_ADMIN, seccomp/apparmor/systempaths unconfined), or "
                    "set CGPO_JUDGES_CODE_SANDBOX=weak for development only (programs then share what this "
                    "machine allows, guarded by a Python audit hook a determined program can get around).",
                    self.unavailable)

    def close(self) -> None:
        with self._setup_lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None

    def judge(self, samples: Sequence[Sample], *, deadline: float | None = None) -> list[Verdict]:
        """One verdict per sample; a program not started by ``deadline`` (Unix time) answers ``error``."""
        self.setup()
        if self.unavailable is not None:
            message = f"the strict code sandbox is unavailable on this worker (see its log): {self.unavailable}"
            return [errored("sandbox_unavailable", message=message[:2000]) for _ in samples]
        verdicts: list[Verdict | None] = [None] * len(samples)
        jobs, waiting = [], []
        for i, sample in enumerate(samples):
            try:
                tests, labels = build_tests(sample.metadata)
            except MetadataError as exc:
                verdicts[i] = errored("malformed_metadata", message=str(exc))
                continue
            jobs.append(Job(extract_code(sample.response), tuple(tests), _entry_point(sample.metadata)))
            waiting.append((i, labels))
        results = self._pool.run_many(jobs, deadline=deadline) if jobs else []
        for (i, labels), result in zip(waiting, results, strict=True):
            verdicts[i] = verdict_for(result, labels)
        return verdicts  # type: ignore[return-value]


def _entry_point(metadata: Mapping[str, Any]) -> str | None:
    """The declared function under test (validated by ``build_tests``): it must exist, and it is the
    one name allowed to shadow a builtin."""
    return metadata.get("entry_point")


def verdict_for(result: RunResult, labels: Sequence[str]) -> Verdict:
    """Map a sandbox run to pass / fail / error with a bounded, readable detail (valid UTF-8 throughout)."""
    verdict = _verdict_for(result, labels)
    return Verdict(verdict=verdict.verdict, detail=_valid_utf8(verdict.detail))


def _valid_utf8(value: Any) -> Any:
    """Strings with lone surrogates (a program's ``chr(0xD800)``) cannot be encoded: U+FFFD instead."""
    if isinstance(value, str):
        return _SURROGATES.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_valid_utf8(k): _valid_utf8(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_valid_utf8(v) for v in value]
    return value


def _verdict_for(result: RunResult, labels: Sequence[str]) -> Verdict:
    if result.status == "ok":
        return passed(tests=len(labels), duration_s=result.duration_s)
    if result.status == "error":
        return errored("sandbox", message=result.message)
    if result.status == "unavailable":
        return errored("sandbox_unavailable", message=result.message)
    if result.status == "deadline":
        return errored("deadline", message=result.message)
    index = result.failed_test
    if index is not None and result.bad_test:
        return errored("malformed_metadata", message=f"test {index} does not compile: {result.message}",
                       test=_clip(labels[index]))
    detail: dict[str, Any] = {"reason": _reason(result), "stage": "program" if index is None else "test"}
    if index is not None:
        detail |= {"test_index": index, "test": _clip(labels[index])}
    if result.exc_type:
        detail["exception"] = result.exc_type
    if result.message:
        detail["message"] = _clip(result.message)
    if result.traceback:
        detail["line"] = _clip(_failing_line(result, index))
    detail["stderr"] = result.stderr[-_STDERR_TAIL:]
    return failed(**detail)


def _reason(result: RunResult) -> str:
    if result.status in _STATUS_REASONS:
        return result.status
    if result.failed_test is None:
        return "syntax_error" if result.exc_type == "SyntaxError" else "program_raised"
    return "wrong_answer" if result.exc_type == "AssertionError" else "test_raised"


def _failing_line(result: RunResult, index: int | None) -> str:
    """The innermost line of test code (check()'s failing assert), else the innermost line."""
    frames = result.traceback
    in_tests = [line for name, _, line in frames if name.startswith("<test")]
    return (in_tests or [frames[-1][2]])[-1] if index is not None else frames[-1][2]


def _clip(text: str) -> str:
    return text if len(text) <= _TEXT_MAX else text[: _TEXT_MAX - 3] + "..."
