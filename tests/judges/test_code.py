"""The code judge: extraction, test shapes, verdict details, hostile responses."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid

import pytest

from services.judges.base import Sample
from services.judges.code import CodeJudge, MetadataError, build_tests, extract_code, verdict_for
from services.judges.sandbox import RunResult

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
    judge = CodeJudge(timeout_s=TIMEOUT_S, memory_mb=256, max_processes=8, max_file_bytes=64 << 10, workers=2)
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
    verdict = _one(judge, "def add(a, b):\n    return a + b", {"unit_tests": "assert add(1, 2) == 3\nassert add(0, 0) == 0"})
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


def test_sandbox_failure_is_an_error():
    verdict = verdict_for(RunResult(status="error", message="sandbox failure: zygote died"), ["assert True"])
    assert verdict.verdict == "error" and verdict.detail["error"] == "sandbox"


def test_zygote_killed_mid_batch_is_an_error_then_recovers():
    judge = CodeJudge(timeout_s=3, workers=1)
    judge.setup()
    try:
        zygote = judge._pool.sandboxes[0]._proc.pid
        threading.Timer(0.3, os.killpg, (zygote, signal.SIGKILL)).start()
        slow = Sample("p", "import time\ntime.sleep(1)\ndef add(a, b):\n    return a + b", MBPP_META)
        assert judge.judge([slow])[0].verdict == "error"
        assert _one(judge, "def add(a, b):\n    return a + b", MBPP_META).verdict == "pass"
    finally:
        judge.close()


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
    samples = [Sample("p", program + "\ndef add(a, b):\n    return a + b", MBPP_META) for program, _ in hostile.values()]
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
