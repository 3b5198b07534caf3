"""The code judge: extraction, test shapes, verdict details, hostile responses."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
import uuid

import pytest

from cgpo.services.judges import registry
from cgpo.services.judges.base import Sample
from cgpo.services.judges.code import CodeJudge, MetadataError, build_tests, extract_code, verdict_for
from cgpo.services.judges.config import JudgeConfig
from cgpo.services.judges.sandbox import Isolation, RunResult

TIMEOUT_S = 1.0
SECRET = "cgpo-secret-" + uuid.uuid4().hex

HE_TEST = '''
METADATA = {"author": "jt"}


def check(candidate):
    assert candidate([1.0, 2.0, 3.0], 0.5) == False
    assert candidate([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3) == True
    assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True
'''
HE_META = {"test": HE_TEST, "entry_point": "has_close_elements"}
HE_GOOD = '''Here is my solution:

```python
from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    for i, a in enumerate(numbers):
        for b in numbers[i + 1:]:
            if abs(a - b) < threshold:
                return True
    return False
```

It compares every pair.'''
HE_BAD = "```python\ndef has_close_elements(numbers, threshold):\n    return len(numbers) > 5\n```"
MBPP_META = {"unit_tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]}


@pytest.fixture(scope="module")
def judge():
    os.environ["CGPO_API_KEYS"] = SECRET  # in the service's environment before the sandbox starts
    # weak: every layer strict mode requires where the machine has them (root with CAP_SYS_ADMIN), and
    # still a run where it has not; strict itself is tested on its own below.
    judge = CodeJudge(timeout_s=TIMEOUT_S, memory_mb=256, max_processes=8, max_file_bytes=64 << 10, workers=2,
                      sandbox="weak")
    judge.setup()
    yield judge
    judge.close()
    os.environ.pop("CGPO_API_KEYS", None)


def _one(judge: CodeJudge, response: str, metadata: dict):
    return judge.judge([Sample("prompt", response, metadata)])[0]


# ---------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("response", "code"),
    [
        ("```python\nx = 1\n```", "x = 1\n"),
        ("Sure:\n```py\nx = 2\n```\nDone.", "x = 2\n"),
        ("```Python3\nx = 3\n```", "x = 3\n"),
        ("```text\nnot code\n```\n```python\nx = 4\n```\n```python\nx = 5\n```", "x = 4\n"),
        ("```\nx = 6\n```\n```bash\nls\n```", "x = 6\n"),
        ("```bash\nls\n```\ntext\n```\nx = 7\n```", "ls\n"),
        ("```python\nx = 8\n# cut off by the token limit", "x = 8\n# cut off by the token limit"),
        ("def f():\n    return 9", "def f():\n    return 9"),
        ("  ```python\n  x = 10\n  ```", "  x = 10\n"),
        ("inline ```python x``` is not a fence\nx = 11", "inline ```python x``` is not a fence\nx = 11"),
    ],
)
def test_extract_code(response, code):
    assert extract_code(response) == code


# ---------------------------------------------------------------- metadata


def test_build_tests_shapes():
    assert build_tests({"unit_tests": ["assert f()", " "]}) == (["assert f()"], ["assert f()"])
    assert build_tests({"unit_tests": "assert f()\nassert g()"})[0] == ["assert f()\nassert g()"]
    sources, labels = build_tests(HE_META)
    assert sources == [HE_TEST, "check(has_close_elements)"] and labels[1] == "check(has_close_elements)"
    assert build_tests({"unit_tests": ["assert pow(2, 3) == 8"], "entry_point": "pow"})[0] == ["assert pow(2, 3) == 8"]


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"answer": "4"},
        {"unit_tests": []},
        {"unit_tests": 3},
        {"unit_tests": ["assert True", 1]},
        {"test": HE_TEST},
        {"entry_point": "f"},
        {"test": HE_TEST, "entry_point": "f); import os; os._exit(0); ("},
        {"test": HE_TEST, "entry_point": "lambda"},
        {"test": 5, "entry_point": "f"},
        {"unit_tests": ["assert f()"], "entry_point": "not a name"},
        {"unit_tests": [], "entry_point": "f"},
    ],
)
def test_malformed_metadata_is_an_error(judge, metadata):
    with pytest.raises(MetadataError):
        build_tests(metadata)
    verdict = _one(judge, "def f(): pass", metadata)
    assert verdict.verdict == "error" and verdict.detail["error"] == "malformed_metadata"


def test_a_test_that_does_not_compile_is_an_error(judge):
    verdict = _one(judge, "def add(a, b):\n    return a + b", {"unit_tests": ["assert add(1, 2) == 3 +"]})
    assert verdict.verdict == "error" and verdict.detail["error"] == "malformed_metadata"


# ---------------------------------------------------------------- verdicts


def test_unit_tests_pass(judge):
    verdict = _one(judge, "```python\ndef add(a, b):\n    return a + b\n```", MBPP_META)
    assert verdict.verdict == "pass" and verdict.detail["tests"] == 3


def test_unit_tests_as_one_string(judge):
    verdict = _one(judge, "def add(a, b):\n    return a + b",
                   {"unit_tests": "assert add(1, 2) == 3\nassert add(0, 0) == 0"})
    assert verdict.verdict == "pass"


def test_failing_unit_test_is_named(judge):
    verdict = _one(judge, "def add(a, b):\n    return a + b if a > 0 else -1", MBPP_META)
    assert verdict.verdict == "fail"
    detail = verdict.detail
    assert (detail["reason"], detail["test_index"], detail["test"]) == ("wrong_answer", 1, "assert add(-1, 1) == 0")
    assert detail["exception"] == "AssertionError" and detail["line"] == "assert add(-1, 1) == 0"
    assert "AssertionError" in detail["stderr"]


def test_humaneval_check_passes(judge):
    verdict = _one(judge, HE_GOOD, HE_META)
    assert verdict.verdict == "pass", verdict


def test_humaneval_failing_assertion_line_is_recovered(judge):
    verdict = _one(judge, HE_BAD, HE_META)
    assert verdict.verdict == "fail"
    assert verdict.detail["test"] == "check(has_close_elements)"
    assert verdict.detail["line"] == "assert candidate([1.0, 2.0, 5.9, 4.0, 5.0], 0.95) == True"


def test_exception_in_candidate_names_the_exception(judge):
    response = "def has_close_elements(numbers, threshold):\n    return 1 / 0"
    verdict = _one(judge, response, HE_META)
    assert verdict.detail["reason"] == "test_raised" and verdict.detail["exception"] == "ZeroDivisionError"
    assert verdict.detail["line"].startswith("assert candidate([1.0, 2.0, 3.0], 0.5)")


def test_syntax_error_and_missing_function_fail(judge):
    verdict = _one(judge, "def add(a, b) return a + b", MBPP_META)
    assert (verdict.verdict, verdict.detail["reason"], verdict.detail["stage"]) == ("fail", "syntax_error", "program")
    verdict = _one(judge, "I cannot write this function.", MBPP_META)
    assert verdict.verdict == "fail" and verdict.detail["stage"] == "program"
    verdict = _one(judge, "x = 1", MBPP_META)
    assert verdict.detail["exception"] == "NameError" and verdict.detail["test_index"] == 0


def test_stderr_in_detail_is_bounded(judge):
    response = "import sys\nsys.stderr.write('e' * 100_000)\ndef add(a, b):\n    return 0"
    verdict = _one(judge, response, MBPP_META)
    assert verdict.verdict == "fail" and len(verdict.detail["stderr"]) <= 1000


def test_every_string_in_a_verdict_is_valid_utf8():
    """A program's lone surrogates (chr(0xD800)) must not reach the queue, whose JSON encoding would fail."""
    result = RunResult(status="exception", failed_test=0, exc_type="E\ud800", message="bad \udfff",
                       traceback=[("<test 0>", 1, "assert f() == '\ud800'")], stderr="x\ud800")
    verdict = verdict_for(result, ["assert f() == '\ud800'"])
    json.dumps(verdict.model_dump(), ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate
    detail = verdict.detail
    assert (detail["exception"], detail["message"], detail["stderr"]) == ("E\ufffd", "bad \ufffd", "x\ufffd")
    assert detail["test"] == detail["line"] == "assert f() == '\ufffd'"
    error = verdict_for(RunResult(status="error", message="sandbox failure: \ud800"), ["assert True"])
    assert error.detail["message"] == "sandbox failure: \ufffd"


def test_programs_not_started_by_the_deadline_are_errors(judge):
    good = Sample("p", "def add(a, b):\n    return a + b", MBPP_META)
    late = judge.judge([good] * 3, deadline=time.time() - 1)
    assert [(v.verdict, v.detail["error"]) for v in late] == [("error", "deadline")] * 3
    assert judge.judge([good], deadline=time.time() + 60)[0].verdict == "pass"


def test_sandbox_failure_is_an_error():
    verdict = verdict_for(RunResult(status="error", message="sandbox failure: zygote died"), ["assert True"])
    assert verdict.verdict == "error" and verdict.detail["error"] == "sandbox"


def test_zygote_killed_mid_batch_is_replaced_and_the_program_judged_again():
    judge = CodeJudge(timeout_s=3, workers=1, sandbox="weak")
    judge.setup()
    try:
        zygote = judge._pool.sandboxes[0]._proc.pid
        threading.Timer(0.3, os.killpg, (zygote, signal.SIGKILL)).start()
        slow = Sample("p", "import time\ntime.sleep(1)\ndef add(a, b):\n    return a + b", MBPP_META)
        assert judge.judge([slow])[0].verdict == "pass"
        assert judge._pool.sandboxes[0]._proc.pid != zygote
        assert _one(judge, "def add(a, b):\n    return a + b", MBPP_META).verdict == "pass"
    finally:
        judge.close()


def test_a_program_that_takes_down_its_sandbox_twice_fails():
    verdict = verdict_for(RunResult(status="crashed_sandbox", message="the run ended its sandbox twice"),
                          ["assert add(1, 2) == 3"])
    detail = verdict.detail
    assert (verdict.verdict, detail["reason"], detail["stage"]) == ("fail", "crashed_sandbox", "program")


# ---------------------------------------------------------------- strict and weak sandboxes


@pytest.mark.skipif(os.geteuid() != 0, reason="the strict sandbox needs root (with CAP_SYS_ADMIN)")
def test_the_strict_sandbox_is_the_default_and_runs_here():
    judge = CodeJudge(timeout_s=TIMEOUT_S, workers=1)
    try:
        good, bad = judge.judge([Sample("p", "def add(a, b):\n    return a + b", MBPP_META),
                                 Sample("p", "def add(a, b):\n    return a - b", MBPP_META)])
        assert judge.sandbox == "strict" and judge.isolation.strict and judge.unavailable is None
        assert judge._pool.missing_layers == [], judge._pool.isolation
        assert (good.verdict, bad.verdict) == ("pass", "fail")
    finally:
        judge.close()


def test_strict_without_the_kernel_layers_runs_nothing(caplog, tmp_path):
    """Forced degraded (no namespaces): every item is the same error, whatever the program, and the
    worker's log says once what is missing and how to fix it."""
    marker = tmp_path / "ran"
    judge = CodeJudge(timeout_s=TIMEOUT_S, workers=2, isolation=Isolation(namespaces=False))
    try:
        with caplog.at_level(logging.WARNING, logger="cgpo.services.judges.code"):
            first = judge.judge([Sample("p", "def add(a, b):\n    return a + b", MBPP_META),
                                 Sample("p", f"open({str(marker)!r}, 'w').close()", MBPP_META),
                                 Sample("p", "import os\nos.kill(os.getpid(), 40)", MBPP_META),
                                 Sample("p", "x = 1", {})])
            second = judge.judge([Sample("p", "def add(a, b):\n    return a - b", MBPP_META)])
    finally:
        judge.close()
    verdicts = first + second
    assert {(v.verdict, v.detail["error"]) for v in verdicts} == {("error", "sandbox_unavailable")}
    assert len({v.detail["message"] for v in verdicts}) == 1 and "mount namespace" in verdicts[0].detail["message"]
    assert not marker.exists() and judge._pool is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "CAP_SYS_ADMIN" in warnings[0] and "CGPO_JUDGES_CODE_SANDBOX=weak" in warnings[0]
    assert "network namespace" in warnings[0] and "minimal root" in warnings[0]


def test_weak_runs_programs_with_what_the_machine_allows():
    judge = CodeJudge(timeout_s=TIMEOUT_S, workers=1, isolation=Isolation(namespaces=False), sandbox="weak")
    try:
        good, bad = judge.judge([Sample("p", "def add(a, b):\n    return a + b", MBPP_META),
                                 Sample("p", "def add(a, b):\n    return a - b", MBPP_META)])
        assert (good.verdict, bad.verdict) == ("pass", "fail")
        assert judge._pool.missing_layers and not judge.isolation.strict
    finally:
        judge.close()


def test_the_sandbox_setting_is_validated_and_reaches_the_judge():
    with pytest.raises(ValueError, match="sandbox"):
        CodeJudge(sandbox="loose")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CGPO_JUDGES_CODE_SANDBOX"):
        JudgeConfig.from_env({"CGPO_JUDGES_CODE_SANDBOX": "loose"})
    assert JudgeConfig.from_env({}).code_sandbox == "strict"
    config = JudgeConfig.from_env({"CGPO_JUDGES_CODE_SANDBOX": "weak", "CGPO_JUDGES_ENABLED": "code"})
    assert registry.build(config)["code"].sandbox == "weak"


def test_batch_keeps_order_and_mixes_errors(judge):
    good, bad = "def add(a, b):\n    return a + b", "def add(a, b):\n    return a * b"
    samples = [Sample("p", r, m) for r, m in [(good, MBPP_META), (bad, MBPP_META), (good, {}), (HE_GOOD, HE_META),
                                               (HE_BAD, HE_META)] * 3]
    assert [v.verdict for v in judge.judge(samples)] == ["pass", "fail", "error", "pass", "fail"] * 3
    assert judge.judge([]) == []


# ---------------------------------------------------------------- hostile responses


def _hostile(port: int, service_pid: int) -> dict[str, tuple[str, str]]:
    """name -> (program, expected reason); every one must fail without harm."""
    escape = f"/tmp/code-judge-escape-{uuid.uuid4().hex}"
    return {
        "infinite_loop": ("while True:\n    pass", "timeout|cpu"),
        "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
                      "timeout|cpu|program_raised"),
        "memory_bomb": ("x = []\nwhile True:\n    x.append(' ' * 100_000)", "memory"),
        "write_outside": (f"open({escape!r}, 'w').write('x')", "program_raised"),
        "network": (f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)", "program_raised"),
        "read_env": ("import os\nassert 'CGPO_API_KEYS' not in os.environ\n"
                     f"data = open('/proc/{service_pid}/environ', 'rb').read()\nassert {SECRET!r}.encode() not in data",
                     "program_raised"),
        "read_zygote_env": ("import os\ndata = open('/proc/%d/environ' % os.getppid(), 'rb').read()\n"
                            f"assert {SECRET!r}.encode() not in data\nraise SystemExit('read it')", "program_raised"),
        "kill_parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", "program_raised"),
        "kill_service": (f"import os, signal\nos.killpg({os.getpgrp()}, signal.SIGKILL)", "program_raised"),
    }


def test_hostile_responses_fail_without_harm(judge):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    hostile = _hostile(server.getsockname()[1], os.getpid())
    normal = "def add(a, b):\n    return a + b"
    samples = [Sample("p", program + "\ndef add(a, b):\n    return a + b", MBPP_META)
               for program, _ in hostile.values()]
    samples.append(Sample("p", normal, MBPP_META))
    try:
        started = time.monotonic()
        verdicts = judge.judge(samples)
        # 9 programs on 2 workers, at most 3 of them run to the timeout
        assert time.monotonic() - started < 3 * TIMEOUT_S + 3
        for (name, (_, reasons)), verdict in zip(hostile.items(), verdicts, strict=False):
            assert verdict.verdict == "fail", (name, verdict)
            assert verdict.detail["reason"] in reasons.split("|"), (name, verdict)
        assert verdicts[-1].verdict == "pass"  # the normal sample in the same batch
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()
    assert not any(name.startswith("code-judge-escape-") for name in os.listdir("/tmp"))
    assert _one(judge, normal, MBPP_META).verdict == "pass"  # and the judge still works afterwards
