"""Reward hacks against the ``code`` judge: every one must fail, and honest programs must still pass.

Each hack is a wrong solution plus a trick that passed (or could pass) when the
tests ran inside the program's process: a forged report, an always-equal object,
patched or shadowed builtins, an exit before the tests ran. The judge now runs
the tests in a separate harness process (see ``services/judges/sandbox``), so
each trick must end in ``fail``. The last part runs all of HumanEval.
"""

from __future__ import annotations

import gzip
import json
import os
import time

import pytest

from cgpo.services.judges.base import Sample
from cgpo.services.judges.code import CodeJudge

TIMEOUT_S = 2.0
HUMANEVAL = os.path.join(os.path.dirname(__file__), "..", "data", "humaneval", "HumanEval.jsonl.gz")
ADD_TESTS = {"unit_tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0", "assert add(2, 2) == 4"]}
WRONG_ADD = "def add(a, b):\n    return a - b\n"
FORGED = '{"status": "ok"}'


@pytest.fixture(scope="module")
def judge():
    # weak: every layer strict mode requires where the machine has them (root with CAP_SYS_ADMIN), and
    # still a run where it has not; strict itself is tested in test_code.py.
    judge = CodeJudge(timeout_s=TIMEOUT_S, memory_mb=256, max_processes=8, max_file_bytes=64 << 10, workers=2,
                      sandbox="weak")
    judge.setup()
    yield judge
    judge.close()


def _verdicts(judge: CodeJudge, cases: list[tuple[str, dict]]):
    return judge.judge([Sample("p", response, metadata) for response, metadata in cases])


# ---------------------------------------------------------------- forging the verdict

# The program knows the old report format and tries every channel it can find to deliver it.
FORGERIES = {
    "frames": """
import os, sys
frame, found = sys._getframe(), []
while frame is not None:  # the old child kept the nonce in a local of a frame up the stack
    found += [v for v in frame.f_locals.values() if isinstance(v, str) and len(v) == 32]
    frame = frame.f_back
for nonce in found or ["0" * 32]:
    line = ('{"status": "ok", "nonce": "%s"}\\n' % nonce).encode()
    for fd in range(256):
        try:
            os.write(fd, line)
        except OSError:
            pass
os._exit(0)
""",
    "proc_self_fd": f"""
import os
for name in os.listdir("/proc/self/fd"):
    try:
        with open("/proc/self/fd/" + name, "w") as f:
            f.write({FORGED!r} + "\\n")
    except OSError:
        pass
os._exit(0)
""",
    "other_processes_fds_and_memory": f"""
import os
for pid in [p for p in os.listdir("/proc") if p.isdigit()] + [str(os.getppid()), "1"]:
    if int(pid) == os.getpid():
        continue
    for what in ("fd/3", "fd/4", "fd/5", "mem"):
        try:
            with open(f"/proc/{{pid}}/{{what}}", "r+b", buffering=0) as f:
                f.write({FORGED!r}.encode() + b"\\n")
                print("wrote", pid, what)
        except OSError:
            pass
""" + WRONG_ADD,
    "module_walk": f"""
import gc, os, sys
objects = []
try:
    objects = gc.get_objects()
except Exception:
    pass
for module in list(sys.modules.values()):  # call the harness's own code from here
    for name in ("REPORT_FD", "REPLIES_FD", "REQUESTS_FD"):
        fd = getattr(module, name, None)
        if isinstance(fd, int):
            try:
                os.write(fd, {FORGED!r}.encode() + b"\\n")
            except OSError:
                pass
    if hasattr(module, "run_tests"):
        try:
            module.run_tests([], None)
        except BaseException:
            pass
""" + WRONG_ADD,
    "stage_markers_then_exit": f"""
import os, sys
for fd in (1, 2, 3, 4):
    try:
        os.write(fd, b'{{"stage": 1}}\\n{{"stage": 2}}\\n{{"stage": 3}}\\n' + {FORGED!r}.encode() + b"\\n")
    except OSError:
        pass
sys.stdout.flush()
os._exit(0)
""",
    "stop_and_kill_everyone": """
import os, signal
for sig in (signal.SIGSTOP, signal.SIGKILL):
    for pid in range(1, 4096):
        if pid != os.getpid():
            try:
                os.kill(pid, sig)
            except OSError:
                pass
""" + WRONG_ADD,
    "forged_manifest_and_answers": """
import json, os, struct, time
def frame(message):
    data = json.dumps(message).encode()
    return struct.pack(">I", len(data)) + data
# Its own manifest first, then an "answer" that is an opaque object of the program's.
os.write(4, frame(["manifest", [["add", ["h", 0, "function"]]]]) + frame(["v", ["h", 1, "AlwaysEqual"], []]))
time.sleep(10)
""",
    "forged_program_report": """
import json, os, struct, time
data = json.dumps(["failed", {"status": "ok", "exc_type": "X", "message": ""}]).encode()
os.write(4, struct.pack(">I", len(data)) + data)
time.sleep(10)
""",
}


@pytest.mark.parametrize("name", list(FORGERIES))
def test_a_forged_report_never_passes(judge, name):
    verdict = _verdicts(judge, [(FORGERIES[name], ADD_TESTS)])[0]
    assert verdict.verdict == "fail", verdict
    assert verdict.detail["reason"] != "ok"


# The program rewrites its own side of the channel to claim that its ``decode`` is ``builtins.exec``,
# or that ``runner`` is the ``timeit`` module: if the harness took such a claim, the test
# would run the program's string (a forged report) in the trusted process.
CLAIM_SETUP = r"""
import sys
side = next(m for m in list(sys.modules.values()) if hasattr(m, "ProgramEncoder") and hasattr(m, "Server"))
encode_other, manifest = side.ProgramEncoder.other, side.Server.manifest
FORGE = "import os\nos.write(3, b'{\"status\": \"ok\"}\\n')\nos._exit(0)"
def encode(s):
    return FORGE
"""
CLAIMS = {
    "decode_is_exec": CLAIM_SETUP + r"""
def other(self, value, depth):
    if getattr(value, "__name__", None) == "decode":
        return ["o", "builtins", "exec"]
    return encode_other(self, value, depth)
side.ProgramEncoder.other = other
def decode(s):
    return "wrong"
""",
    "runner_is_timeit": CLAIM_SETUP + r"""
def claimed_manifest(self, namespace):
    return [[e[0], ["m"]] if e[0] == "runner" else e for e in manifest(self, namespace)]
side.Server.manifest = claimed_manifest
def decode(s):
    return "wrong"
runner = None
""",
    "returns_timeit": CLAIM_SETUP + r"""
def other(self, value, depth):
    if value is RUNNER:
        return ["m", "timeit"]
    return encode_other(self, value, depth)
side.ProgramEncoder.other = other
class Runner:
    pass
RUNNER = Runner()
def make_runner():
    return RUNNER
""",
}
CLAIM_TESTS = {
    "decode_is_exec": "assert decode(encode('abc')) == 'abc'",
    "runner_is_timeit": "runner.timeit(encode('abc'), number=1)\nassert False",
    "returns_timeit": "make_runner().timeit(encode('abc'), number=1)\nassert False",
}


@pytest.mark.parametrize("name", list(CLAIMS))
def test_claiming_to_be_a_dangerous_stdlib_object_fails(judge, name):
    verdict = _verdicts(judge, [(CLAIMS[name], {"unit_tests": [CLAIM_TESTS[name]]})])[0]
    assert verdict.verdict == "fail", verdict


def test_the_program_cannot_read_the_tests(judge):
    """Expected answers live in the tests, which never reach the program's process."""
    token = "expected-answer-7f3a9c"  # the program below builds it from two halves: its source lacks it
    program = f"""
import sys
seen, stack = set(), []
frame = sys._getframe()
while frame is not None:
    stack += list(frame.f_locals.values()) + list(frame.f_globals.values())
    frame = frame.f_back
for module in list(sys.modules.values()):
    stack += list(getattr(module, "__dict__", {{}}).values())
found = False
while stack and len(seen) < 200000:
    value = stack.pop()
    if id(value) in seen:
        continue
    seen.add(id(value))
    if isinstance(value, str) and {token[:8]!r} + {token[8:]!r} in value:
        found = True
    elif isinstance(value, dict):
        stack += list(value.keys()) + list(value.values())
    elif isinstance(value, (list, tuple, set, frozenset)):
        stack += list(value)
def f():
    return found
"""
    verdict = _verdicts(judge, [(program, {"unit_tests": [f"assert f() is False, {token!r}"]})])[0]
    assert verdict.verdict == "pass", verdict


# ---------------------------------------------------------------- hacks on the comparison

ALWAYS_EQUAL = ("class AlwaysEqual:\n    def __eq__(self, other):\n        return True\n"
                "    def __ne__(self, other):\n        return False\n    __hash__ = object.__hash__\n")
# name -> (program, the dataset-style test the trick is aimed at); every program is wrong.
HACKS = {
    "always_equal_object": (ALWAYS_EQUAL + "def add(a, b):\n    return AlwaysEqual()", "assert add(1, 2) == 3"),
    "always_equal_reflected": (ALWAYS_EQUAL + "def add(a, b):\n    return AlwaysEqual()", "assert 3 == add(1, 2)"),
    "never_unequal": (ALWAYS_EQUAL + "def add(a, b):\n    return AlwaysEqual()", "assert not add(1, 2) != 3"),
    "always_equal_in_a_list": (ALWAYS_EQUAL + "def pair():\n    return [AlwaysEqual(), AlwaysEqual()]",
                               "assert pair() == [1, 2]"),
    "eq_on_the_metaclass": ("class Meta(type):\n    def __eq__(cls, other):\n        return True\n"
                            "    __hash__ = type.__hash__\nclass Any(metaclass=Meta):\n    pass\n"
                            "def add(a, b):\n    return Any", "assert add(1, 2) == 3"),
    "str_subclass": ("class S(str):\n    def __eq__(self, other):\n        return True\n    __hash__ = str.__hash__\n"
                     "def greet():\n    return S('nope')", "assert greet() == 'hello'"),
    "int_subclass": ("class I(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
                     "def add(a, b):\n    return I(0)", "assert add(1, 2) == 3"),
    "float_subclass": ("class F(float):\n    def __sub__(self, other):\n        return F(0.0)\n"
                       "    def __abs__(self):\n        return 0.0\n"
                       "def mean(xs):\n    return F(9.0)", "assert abs(mean([1.0, 2.0]) - 1.5) < 1e-6"),
    "list_subclass": ("class L(list):\n    def __eq__(self, other):\n        return True\n"
                      "def pair():\n    return L()", "assert pair() == [1, 2]"),
    "tuple_subclass": ("class T(tuple):\n    def __eq__(self, other):\n        return True\n"
                       "    __hash__ = tuple.__hash__\n"
                       "def pair():\n    return T()", "assert pair() == (1, 2)"),
    "patched_abs": ("import builtins\nbuiltins.abs = lambda x: 0\ndef add(a, b):\n    return 7",
                    "assert abs(add(1, 2) - 3) < 1e-6"),
    "patched_isinstance": ("import builtins\nbuiltins.isinstance = lambda *a: True\ndef count():\n    return 'x'",
                           "assert isinstance(count(), int)"),
    "patched_len": ("import builtins\nbuiltins.len = lambda x: 3\ndef triple():\n    return []",
                    "assert len(triple()) == 3"),
    "patched_sorted": ("import builtins\nbuiltins.sorted = lambda *a, **k: [1, 2, 3]\ndef nums():\n    return [3, 3]",
                       "assert sorted(nums()) == [1, 2, 3]"),
    "patched_assertion_error": ("import builtins\nbuiltins.AssertionError = type('Passed', (BaseException,), {})\n"
                                "def add(a, b):\n    return 0", "assert add(1, 2) == 3"),
    "patched_math_isclose": ("import math\nmath.isclose = lambda *a, **k: True\ndef add(a, b):\n    return 0",
                             "assert math.isclose(add(1, 2), 3)"),
    "patched_math_isclose_imported_by_the_test": (
        "import math\nmath.isclose = lambda *a, **k: True\ndef add(a, b):\n    return 0",
        "import math\nassert math.isclose(add(1, 2), 3)"),
    "fake_math_module": ("class FakeMath:\n    def isclose(self, *a, **k):\n        return True\n"
                         "math = FakeMath()\ndef add(a, b):\n    return 0", "assert math.isclose(add(1, 2), 3)"),
    "shadowed_abs": ("def abs(x):\n    return 0\ndef add(a, b):\n    return 7", "assert abs(add(1, 2) - 3) < 1e-6"),
    "shadowed_isinstance": ("def isinstance(*a):\n    return True\ndef count():\n    return 'x'",
                            "assert isinstance(count(), int)"),
    "shadowed_len": ("def len(x):\n    return 3\ndef triple():\n    return []", "assert len(triple()) == 3"),
    "shadowed_sorted": ("def sorted(*a, **k):\n    return [1, 2, 3]\ndef nums():\n    return [3, 3]",
                        "assert sorted(nums()) == [1, 2, 3]"),
    "shadowed_all": ("def all(x):\n    return True\ndef ok(n):\n    return False",
                     "assert all(ok(n) for n in range(3))"),
    "stop_iteration_ends_the_loop": ("def add(a, b):\n    raise StopIteration",
                                     "assert all(map(lambda p: add(*p) == sum(p), [(1, 2), (2, 3)]))"),
}


# A global the tests use as a module (``math.isclose``) is the harness's own import, whatever the
# program bound to it: plain data that can carry callables (a namedtuple of lambdas, of ``complex``)
# as well as opaque objects.
MODULE_IMPOSTORS = {
    "namedtuple_of_lambdas": ("import collections\nmath = collections.namedtuple('math', ['isclose', 'sqrt'])"
                              "(lambda *a, **k: True, lambda x: 0)\n",
                              "assert math.isclose(volume_sphere(10), 4188.790204786391, rel_tol=0.001)"),
    "namedtuple_of_complex": ("import collections\nmath = collections.namedtuple('math', ['isclose', 'fabs'])"
                              "(complex, complex)\n", "assert math.isclose(volume_sphere(10), 4188.790204786391)"),
    "namedtuple_posing_as_re": ("import collections\nre = collections.namedtuple('re', ['fullmatch', 'search'])"
                                "(lambda *a, **k: True, lambda *a, **k: True)\n",
                                "assert re.fullmatch(r'\\d{3}-\\d{4}', str(volume_sphere(10)))"),
    "dict": ("math = {'isclose': lambda *a, **k: True}\n",
             "assert math.isclose(volume_sphere(10), 4188.790204786391, rel_tol=0.001)"),
    "simple_namespace": ("import types\nmath = types.SimpleNamespace(isclose=lambda *a, **k: True)\n",
                         "assert math.isclose(volume_sphere(10), 4188.790204786391, rel_tol=0.001)"),
    "plain_type_as_module": ("statistics = complex\n", "assert statistics.mean([volume_sphere(1), 3]) == 2"),
}


@pytest.mark.parametrize("name", list(MODULE_IMPOSTORS))
def test_a_program_value_posing_as_a_stdlib_module_is_not_what_the_tests_see(judge, name):
    impostor, test = MODULE_IMPOSTORS[name]
    program = impostor + "def volume_sphere(r):\n    return 0\n"
    verdict = _verdicts(judge, [(program, {"unit_tests": [test]})])[0]
    assert verdict.verdict == "fail" and verdict.detail["reason"] == "wrong_answer", verdict


def test_module_names_the_program_binds_honestly_still_work(judge):
    """An honest program's ``import math`` and a global named like a module that the tests never use
    as one stay as they were; a declared entry point named like a module is the program's."""
    honest = ("import math, re\nstring = 'abc'\n"
              "def volume_sphere(r):\n    return 4 / 3 * math.pi * r ** 3\n")
    tests = ["assert math.isclose(volume_sphere(10), 4188.790204786391, rel_tol=0.001)",
             "assert re.fullmatch('a+', 'aa') and string == 'abc'"]
    named_like_a_module = ("def heapq(xs):\n    return sorted(xs)[:1]",
                           {"unit_tests": ["assert heapq([3, 1]) == [1] and heapq.__qualname__ == 'heapq'"],
                            "entry_point": "heapq"})
    verdicts = _verdicts(judge, [(honest, {"unit_tests": tests}), named_like_a_module])
    assert [v.verdict for v in verdicts] == ["pass", "pass"], verdicts


@pytest.mark.parametrize("name", list(HACKS))
def test_comparison_hacks_fail(judge, name):
    program, test = HACKS[name]
    verdict = _verdicts(judge, [(program, {"unit_tests": [test, "assert True"]})])[0]
    assert verdict.verdict == "fail", verdict
    assert verdict.detail["stage"] == "test" and verdict.detail["test_index"] == 0, verdict


def test_builtins_patched_by_the_program_do_not_reach_the_tests(judge):
    """A correct answer still passes after the program patched builtins for itself; a wrong one fails."""
    patch = "import builtins\nbuiltins.abs = lambda x: 0\nbuiltins.len = lambda x: 3\n"
    good, bad = _verdicts(judge, [
        (patch + "def f(x):\n    return x * 2", {"unit_tests": ["assert abs(f(2) - 4) < 1e-9 and len([1]) == 1"]}),
        (patch + "def f(x):\n    return 0", {"unit_tests": ["assert abs(f(2) - 4) < 1e-9"]}),
    ])
    assert good.verdict == "pass", good
    assert bad.verdict == "fail", bad


def test_the_entry_point_may_shadow_a_builtin(judge):
    he = {"test": "def check(candidate):\n    assert candidate([3, 1]) == 3\n", "entry_point": "max"}
    good, bad = _verdicts(judge, [("def max(xs):\n    return sorted(xs)[-1]", he),
                                  ("def max(xs):\n    return 0", he)])
    assert (good.verdict, bad.verdict) == ("pass", "fail"), (good, bad)


# MBPP-style tasks whose function is named like a builtin: without ``entry_point`` the tests keep the
# real builtin (so ``def pow(a, b): return 0`` would pass); with it, the program's is the one tested.
POW_TESTS = {"unit_tests": ["assert pow(2, 3) == 8", "assert pow(3, 2) == 9"], "entry_point": "pow"}


def test_a_declared_entry_point_named_like_a_builtin_is_the_one_tested(judge):
    good, wrong, missing, not_callable = _verdicts(judge, [
        ("def pow(a, b):\n    return a ** b", POW_TESTS),
        ("def pow(a, b):\n    return 0", POW_TESTS),
        ("print('no function at all')", POW_TESTS),
        ("pow = 8", POW_TESTS),
    ])
    assert good.verdict == "pass", good
    assert (wrong.verdict, wrong.detail["reason"], wrong.detail["test_index"]) == ("fail", "wrong_answer", 0), wrong
    for verdict in (missing, not_callable):
        assert (verdict.verdict, verdict.detail["reason"], verdict.detail["stage"]) == \
            ("fail", "missing_function", "program"), verdict
        assert "'pow'" in verdict.detail["message"]


def test_without_an_entry_point_other_builtin_names_stay_hidden(judge):
    """The documented limit, and why ``entry_point`` exists: only the declared name may shadow a
    builtin, so the rest of the program (its own ``abs``) never reaches the tests."""
    tests = {"unit_tests": ["assert pow(2, 3) == 8 and abs(-1) == 1"], "entry_point": "pow"}
    verdict = _verdicts(judge, [("def abs(x):\n    return 0\ndef pow(a, b):\n    return a ** b", tests)])[0]
    assert verdict.verdict == "pass", verdict


def test_a_helper_defined_by_the_tests_cannot_be_replaced_by_the_program(judge):
    """HumanEval/32's shape, with ``poly`` defined in ``test`` (trusted) rather than in the prompt: the
    program's own ``poly`` does not reach ``check``."""
    test = ("def poly(xs, x):\n    return sum(c * x ** i for i, c in enumerate(xs))\n\n\n"
            "def check(candidate):\n    for xs in ([1, 2], [-6, 11, -6, 1]):\n"
            "        assert abs(poly(xs, candidate(xs))) < 1e-4\n")
    metadata = {"test": test, "entry_point": "find_zero"}
    cheat = "def poly(xs, x):\n    return 0\n\n\ndef find_zero(xs):\n    return 12345.0\n"
    honest = ("def find_zero(xs):\n    lo, hi = -100.0, 100.0\n"
              "    f = lambda x: sum(c * x ** i for i, c in enumerate(xs))\n"
              "    for _ in range(200):\n        mid = (lo + hi) / 2\n"
              "        if (f(lo) > 0) == (f(mid) > 0):\n            lo = mid\n        else:\n            hi = mid\n"
              "    return lo\n")
    cheated, solved = _verdicts(judge, [(cheat, metadata), (honest, metadata)])
    assert (cheated.verdict, cheated.detail["reason"]) == ("fail", "wrong_answer"), cheated
    assert solved.verdict == "pass", solved


# ---------------------------------------------------------------- exits before the tests finish

EXITS = {
    "sys_exit_at_top_level": ("import sys\n" + WRONG_ADD + "sys.exit(0)", "program"),
    "os_exit_at_top_level": ("import os\n" + WRONG_ADD + "os._exit(0)", "program"),
    "raise_system_exit_at_top_level": (WRONG_ADD + "raise SystemExit(0)", "program"),
    "sys_exit_inside_the_function": ("import sys\ndef add(a, b):\n    sys.exit(0)", "test"),
    "os_exit_inside_the_function": ("import os\ndef add(a, b):\n    os._exit(0)", "test"),
    "keyboard_interrupt_inside_the_function": ("def add(a, b):\n    raise KeyboardInterrupt", "test"),
    "atexit_handler_exits_0": ("import atexit, os\natexit.register(lambda: os._exit(0))\n" + WRONG_ADD, "test"),
    "killing_itself": ("import os, signal\ndef add(a, b):\n    os.kill(os.getpid(), signal.SIGKILL)", "test"),
}


@pytest.mark.parametrize("name", list(EXITS))
def test_an_exit_before_all_tests_ran_fails(judge, name):
    program, stage = EXITS[name]
    verdict = _verdicts(judge, [(program, ADD_TESTS)])[0]
    assert verdict.verdict == "fail" and verdict.detail["stage"] == stage, verdict


@pytest.mark.parametrize("exc", ["SystemExit(0)", "KeyboardInterrupt", "GeneratorExit"])
def test_an_exit_the_test_catches_still_fails(judge, exc):
    """``except BaseException`` in the test swallows the exception, not the failure."""
    test = "try:\n    add(1, 2)\nexcept BaseException:\n    pass\nassert True"
    verdict = _verdicts(judge, [(f"def add(a, b):\n    raise {exc}", {"unit_tests": [test]})])[0]
    assert verdict.verdict == "fail" and verdict.detail["reason"] == "exited", verdict
    assert verdict.detail["exception"] == exc.split("(")[0]


@pytest.mark.parametrize("program", [
    "def add(a, b):\n    raise SyntaxError('looks like a broken test')",
    "import os\ndef add(a, b):\n    os._exit(71)",  # the zygote's own "could not enter the sandbox" code
    "import os\nos._exit(71)",
    "import os\ndef add(a, b):\n    os._exit(72)",
    # Signals without a name in signal.Signals (real-time ones) once took the zygote down.
    "import os\nos.kill(os.getpid(), 40)",
    "import os\ndef add(a, b):\n    os.kill(os.getpid(), 40)",
    "import os, threading\ndef add(a, b):\n    threading.Timer(0, os.kill, (os.getpid(), 50)).start()\n    return 0",
    # A tree too deep for recursive removal once did too.
    "import os\nos.mkdir('x')\nfor _ in range(1500):\n    os.mkdir('y')\n    os.rename('x', 'y/x')\n"
    "    os.rename('y', 'x')\n" + WRONG_ADD,
])
def test_a_wrong_program_cannot_turn_its_fail_into_an_error(judge, program):
    """``error`` is not counted as a failure everywhere: a program must not be able to produce one."""
    verdict = _verdicts(judge, [(program, ADD_TESTS)])[0]
    assert verdict.verdict == "fail", verdict


def test_the_program_dying_mid_test_is_named(judge):
    verdict = _verdicts(judge, [("import os\ndef add(a, b):\n    os._exit(3)", ADD_TESTS)])[0]
    assert (verdict.detail["reason"], verdict.detail["test_index"]) == ("exited", 0), verdict
    assert "code 3" in verdict.detail["message"] and verdict.detail["line"] == "assert add(1, 2) == 3"


# ---------------------------------------------------------------- honest programs keep passing

HONEST = {
    "in_place_sort": ("def f(xs):\n    xs.sort()", "a = [3, 1, 2]\nf(a)\nassert a == [1, 2, 3]"),
    "in_place_dict_and_kwargs": ("def f(d, s=None):\n    d['k'] = 1\n    s.add(2)",
                                 "d, s = {}, set()\nf(d, s=s)\nassert d == {'k': 1} and s == {2}"),
    "generator": ("def f(n):\n    yield from range(n)", "assert list(f(3)) == [0, 1, 2] and next(f(5)) == 0"),
    "class_instance": ("class Solution:\n    def __init__(self):\n        self.n = 2\n"
                       "    def twice(self, x):\n        return x * self.n",
                       "s = Solution()\nassert s.twice(4) == 8 and s.n == 2 and isinstance(s, Solution)"),
    "expected_exception": ("def f(x):\n    raise ValueError('bad ' + x)",
                           "try:\n    f('x')\n    raise AssertionError\n"
                           "except ValueError as e:\n    assert str(e) == 'bad x'"),
    "exception_args_and_errno": ("def f():\n    raise KeyError('k')\ndef g():\n    open('/nonexistent/x')",
                                 "try:\n    f()\nexcept KeyError as e:\n"
                                 "    assert e.args == ('k',) and str(e) == \"'k'\"\n"
                                 "try:\n    g()\nexcept FileNotFoundError as e:\n"
                                 "    assert e.errno == 2 and 'nonexistent' in str(e)"),
    "own_exception_type": ("class Oops(Exception):\n    pass\ndef f():\n    raise Oops('x')",
                           "try:\n    f()\n    raise AssertionError\nexcept Exception as e:\n    assert 'x' in str(e)"),
    "rich_values": ("from fractions import Fraction\nfrom decimal import Decimal\nfrom collections import Counter, "
                    "OrderedDict, deque, namedtuple, defaultdict\nP = namedtuple('P', 'x y')\n"
                    "def f():\n    return [Fraction(1, 3), Decimal('1.10'), Counter('aab'), OrderedDict(a=1), "
                    "deque([1]), P(1, 2), defaultdict(list, a=[1]), {1: {2: (3, frozenset({4}))}}, b'\\x00', "
                    "bytearray(b'x'), 2 ** 100000, float('inf'), -0.0, 1j, range(3), {}.keys(), None, True]",
                    "from fractions import Fraction\nfrom decimal import Decimal\nfrom collections import Counter\n"
                    "r = f()\n"
                    "assert r[0] == Fraction(1, 3) and r[1] == Decimal('1.10') and r[2] == Counter(a=2, b=1)\n"
                    "assert r[3] == {'a': 1} and list(r[4]) == [1] and r[5] == (1, 2) and r[5].y == 2\n"
                    "assert r[6]['a'] == [1] and r[6]['zz'] == []\n"
                    "assert r[7] == {1: {2: (3, frozenset({4}))}} and r[8] == b'\\x00' and r[9] == bytearray(b'x')\n"
                    "assert r[10] == 2 ** 100000 and r[11] == float('inf') and str(r[12]) == '-0.0' and r[13] == 1j\n"
                    "assert list(r[14]) == [0, 1, 2] and r[15] == set() and r[16] is None and r[17] is True"),
    "surrogates_survive": ("def f():\n    return 'a\\ud800b'", "assert f() == 'a\\ud800b'"),
    "nan_and_module_global": ("import math\ndef f():\n    return float('nan')", "assert math.isnan(f())"),
    "plain_global_and_helper": ("LIMIT = 10\ndef helper(x):\n    return x + 1\n"
                                "def f(x):\n    return min(helper(x), LIMIT)",
                                "assert f(3) == 4 and f(30) == LIMIT and helper(1) == 2"),
    "stdlib_function_returned": ("import operator\ndef pick():\n    return operator.add", "assert pick()(2, 3) == 5"),
    "program_prints": ("print('hello')\ndef f():\n    print('in f')\n    return 1", "assert f() == 1"),
    "recursion": ("def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)", "assert fib(20) == 6765"),
    "many_calls": ("def add(a, b):\n    return a + b", "for i in range(2000):\n    assert add(i, 1) == i + 1"),
}


def test_honest_programs_pass(judge):
    verdicts = _verdicts(judge, [(program, {"unit_tests": [test]}) for program, test in HONEST.values()])
    failures = {name: v.detail for name, v in zip(HONEST, verdicts, strict=True) if v.verdict != "pass"}
    assert not failures


def test_a_lambda_cannot_be_passed_to_the_program(judge):
    """Only data crosses: a test passing its own function gets a clear TypeError."""
    verdict = _verdicts(judge, [("def apply(f, x):\n    return f(x)", {"unit_tests": ["apply(lambda v: v, 1)"]})])[0]
    assert verdict.detail["exception"] == "TypeError" and "cannot pass" in verdict.detail["message"], verdict


# ---------------------------------------------------------------- output that cannot be serialized


def test_lone_surrogates_never_reach_a_verdict(judge):
    responses = [
        ("raise ValueError(chr(0xD800) + 'x')", ADD_TESTS),
        ("def add(a, b):\n    raise type('E\\ud800', (Exception,), {})(chr(0xDFFF))", ADD_TESTS),
        ("import sys\nsys.stderr.write('\\ud800')\n"
         "sys.stdout.buffer.write(b'\\xed\\xa0\\x80')\n" + WRONG_ADD, ADD_TESTS),
        (WRONG_ADD, {"unit_tests": ["assert add(1, 1) == '\\ud800'", "assert True"]}),
        (WRONG_ADD, {"unit_tests": ["x = '\ud800'\nassert add(1, 1) == 5"]}),  # a test Python cannot compile
    ]
    verdicts = _verdicts(judge, responses)
    assert [v.verdict for v in verdicts] == ["fail"] * 4 + ["error"], verdicts
    for verdict in verdicts:
        json.dumps(verdict.model_dump(), ensure_ascii=False).encode("utf-8")  # raises on a lone surrogate
        verdict.model_dump_json()
    first = _verdicts(judge, responses[:1])[0]
    assert first.detail["message"] == "\ufffdx" and first.detail["exception"] == "ValueError"


# ---------------------------------------------------------------- HumanEval (MIT licence, see tests/data/humaneval)


def _humaneval() -> list[dict]:
    with gzip.open(HUMANEVAL, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _drop_last_return(solution: str) -> str:
    lines = solution.rstrip("\n").split("\n")
    last = max(i for i, line in enumerate(lines) if line.strip().startswith("return"))
    return "\n".join(lines[:last] + lines[last + 1:]) + "\n"


@pytest.mark.slow
def test_humaneval_canonical_solutions_pass_and_broken_ones_fail(judge):
    problems = _humaneval()
    assert len(problems) == 164
    samples = []
    for p in problems:
        metadata = {"test": p["test"], "entry_point": p["entry_point"]}
        for body in (p["canonical_solution"], "    return None\n", _drop_last_return(p["canonical_solution"])):
            samples.append(Sample(p["prompt"], f"```python\n{p['prompt']}{body}```", metadata))
    started = time.monotonic()
    verdicts = judge.judge(samples)
    elapsed = time.monotonic() - started
    outcomes = [(p["task_id"], [v.verdict for v in verdicts[3 * i: 3 * i + 3]]) for i, p in enumerate(problems)]
    wrong = [(task, got) for task, got in outcomes if got != ["pass", "fail", "fail"]]
    assert not wrong, wrong
    assert elapsed < 60, elapsed


def test_the_judge_survives_the_hacks(judge):
    """After everything above (stopped, killed, forged), the same zygotes still judge, both ways."""
    zygotes = [sandbox._proc.pid for sandbox in judge._pool.sandboxes]
    verdicts = _verdicts(judge, [("def add(a, b):\n    return a + b", ADD_TESTS), (WRONG_ADD, ADD_TESTS)] * 2)
    assert [v.verdict for v in verdicts] == ["pass", "fail"] * 2, verdicts
    assert [sandbox._proc.pid for sandbox in judge._pool.sandboxes] == zygotes
