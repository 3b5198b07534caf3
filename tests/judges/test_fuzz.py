"""Fuzzing the rule judges: no response makes them run long, crash, or stall the service.

Bounds (what these tests assert):

* corpus (long runs of every ASCII punctuation character and whitespace kind, nested
  brackets, braces and boxes, alternations such as "a." + spaces + "b", the reported
  inputs), CORPUS_CHARS characters each: every item, of every judge (all 25 instruction
  types in one item, strict and loose; math with several reference answers; refusal), is
  decided within ITEM_BOUND_S — the judges run with that per-item limit and no item may
  hit it; verdicts are pass/fail (math-verify itself may answer error, with a reason);
* random text from regex-significant characters and tokens (hypothesis): up to six runs
  of a token repeated up to 1,000 times (up to ~100 KB): every item's checks take under
  RANDOM_BOUND_S in this process;
* 8 MiB responses (slow): every item answers within the default per-item limit plus
  the worker's respawn (SLACK_S), timeouts as ``error``, never ``pass``;
* the service (``cgpo judges serve``, embedded mode, a real process): while it judges
  the pathological batches, `/healthz` answers each poll within HEALTH_BOUND_S; work past
  a request's deadline stops there, and the next request is answered at once.
"""

from __future__ import annotations

import string
import threading
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cgpo.services.judges.base import Sample
from cgpo.services.judges.instructions import INSTRUCTIONS, InstructionsJudge, catalog
from cgpo.services.judges.instructions.judge import judge_one
from cgpo.services.judges.instructions.language import load_profiles
from cgpo.services.judges.instructions.sentences import load_model
from cgpo.services.judges.math import FORMATS, MathJudge, decide
from cgpo.services.judges.refusal import RefusalJudge
from tests.conftest import free_port
from tests.procs import answers_200, spawn, stop, wait_until

CORPUS_CHARS = 20_000
ITEM_BOUND_S = 2.0
RANDOM_BOUND_S = 0.5
HEALTH_BOUND_S = 0.5
SLACK_S = 3.0
BODY_LIMIT = 8 * 1024 * 1024
ANSWERS = ["1", "\\frac{1}{2}", "x^2+1"]
WHITESPACE = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x85", "\xa0", "\u2028", "\u3000"]
# An argument of each kind (catalog's validators), so one item checks all 25 instruction types.
ARGUMENT = {catalog.count: 2, catalog.position: 1, catalog.relation: "at least", catalog.text: "a b",
            catalog.stripped: "a", catalog.lowered: "a", catalog.words: ["a", "b c"], catalog.letter: "a",
            catalog.language: "en"}
EVERY_INSTRUCTION = {"instruction_id_list": list(INSTRUCTIONS),
                     "kwargs": [{name: ARGUMENT[kind] for name, kind in spec.args.items()}
                                for spec in INSTRUCTIONS.values()]}


def corpus(n: int) -> dict[str, str]:
    """Pathological responses of about ``n`` characters."""
    runs = {f"run {c!r}": c * n for c in string.punctuation + "".join(WHITESPACE) + "aA1"}
    units = ["a.", "a. ", ". ", ".\n", "*\n", "\n*", "\n-", "- ", "[a", "a]", "<<", ">>", "<< >>", "<<a>>\n", "{}",
             "}{", "$ ", "\\$", "1,", "1.", "1 ", "? ", "! ", "a! ", '." ', ".)", "'s ", "n't ", "``", "--", "***\n",
             "******", "p. s. ", "P.S. ", "Section 1 ", "http://a", "a@", "e.g. ", "Dr. ", "U.S. ", "\\boxed{",
             "\\fbox {", "final answer is ", "Final Answer: ", "\\frac{", "^\\circ ", "\\text{", "Жж. ", "中文。"]
    alternations = {f"repeat {u!r}": u * (n // len(u)) for u in units}
    k = n // 8
    shaped = {
        "final answer, sign, spaces, !": "The final answer is -" + " " * n + "!",
        "final answer, number, spaces, !": "The final answer is 1" + " " * n + "!",
        "final answer, dots": "The final answer is 7" + " ." * (n // 2),
        "boxed, dots": "\\boxed{7" + " ." * (n // 2) + "}",
        "final answer, nested boxes": "The final answer is " + "\\boxed{" * k + "7" + "}" * k,
        "unclosed boxes": "\\boxed{" * (n // 7),
        "nested brackets": "[" * (n // 2) + "]" * (n // 2),
        "nested braces": "{" * (n // 2) + "}" * (n // 2),
        "nested parentheses": "(" * (n // 2) + ")" * (n // 2),
        "nested angles": "<" * (n // 2) + ">" * (n // 2),
        "a., spaces, b": "a." + " " * n + "b",
        "closers after a period": "a." + ")\"' " * (n // 4) + "b",
        "newlines, then x": "\n" * n + "x",
        "spaces, then a bullet": " " * n + "* x",
        "title over a long line": "<<" + "a" * n + ">>",
        "json, deep": "[" * n,
        "mixed": "".join(string.punctuation[i % 32] + " \n"[i % 2] for i in range(n // 2)),
    }
    return runs | alternations | shaped


def samples_for(text: str) -> dict[str, list[Sample]]:
    return {
        "instructions": [Sample("p", text, {**EVERY_INSTRUCTION, "strict": strict}) for strict in (True, False)],
        "math": [Sample("q", text, {"answer": a}) for a in ANSWERS],
        "refusal": [Sample("p", text, {"mode": mode}) for mode in ("must_not_refuse", "must_refuse")],
    }


@pytest.fixture(scope="module")
def judges():
    with (InstructionsJudge(workers=2, timeout_s=ITEM_BOUND_S) as instructions,
          MathJudge(workers=2, rule_timeout_s=ITEM_BOUND_S, timeout_s=1.0) as math):
        yield {"instructions": instructions, "math": math, "refusal": RefusalJudge()}


@pytest.mark.slow
def test_corpus_items_are_decided_within_the_bound(judges):
    texts = corpus(CORPUS_CHARS)
    batches: dict[str, list[tuple[str, Sample]]] = {name: [] for name in judges}
    for label, text in texts.items():
        for name, samples in samples_for(text).items():
            batches[name] += [(label, s) for s in samples]
    for name, batch in batches.items():
        verdicts = judges[name].judge([s for _, s in batch])
        assert len(verdicts) == len(batch)
        for (label, _), v in zip(batch, verdicts, strict=True):
            assert v.verdict in ("pass", "fail", "error"), (name, label, v)
            if v.verdict == "error":
                # Only math-verify may fail to decide (it is sympy; its own limit is 1 s here).
                assert name == "math" and v.detail.get("method") == "math_verify", (name, label, v.detail)


TOKENS = [*string.punctuation, *WHITESPACE, "a", "A", "1", "x", "\u00e9", "\u4e2d", "\\boxed{", "\\frac{",
          "final answer", "The final answer is ", "P.S.", "p.p.s", "Section 2", "***", "******", "<<", ">>",
          "My answer is yes.", "http://", "a@b", "I'm sorry, but I can't", "e.g.", "DON'T", "'s", "``", "...", "--",
          " .", ". "]


@st.composite
def regex_soup(draw) -> str:
    """Up to 6 runs of a token repeated up to 1,000 times: long runs and their boundaries."""
    runs = draw(st.lists(st.tuples(st.sampled_from(TOKENS), st.integers(1, 1000)), min_size=1, max_size=6))
    return "".join(token * count for token, count in runs)


@pytest.fixture(scope="module")
def warm() -> None:
    """Load langdetect's profiles and the Punkt parameters once, so no example pays for them."""
    load_profiles()
    load_model()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(regex_soup(), st.sampled_from(ANSWERS))
def test_random_text_is_judged_quickly_in_process(warm, text, answer):
    refusal = RefusalJudge()
    for strict in (True, False):
        start = time.perf_counter()
        v = judge_one(Sample("p", text, {**EVERY_INSTRUCTION, "strict": strict}))
        assert time.perf_counter() - start < RANDOM_BOUND_S, len(text)
        assert v.verdict in ("pass", "fail"), v.detail
    start = time.perf_counter()
    out = decide((text, {"answer": answer}, FORMATS, None))
    assert time.perf_counter() - start < RANDOM_BOUND_S, len(text)
    assert isinstance(out, tuple) or out.verdict in ("pass", "fail"), out  # a tuple goes on to math-verify
    start = time.perf_counter()
    [v] = refusal.judge([Sample("p", text)])
    assert time.perf_counter() - start < 0.05 and v.verdict in ("pass", "fail")


def test_a_huge_loose_batch_stops_at_the_deadline(judges):
    judge = judges["instructions"]
    huge = [Sample("p", "*\n" + "? " * 400_000 + "\n*", {**EVERY_INSTRUCTION, "strict": False})] * 12
    start = time.monotonic()
    verdicts = judge.judge(huge, deadline=time.time() + 1.5)  # seconds each, over its loose variants
    assert time.monotonic() - start < 2.5
    assert all(v.verdict == "error" and "deadline" in v.detail["error"] for v in verdicts)
    start = time.monotonic()
    [v] = judge.judge([Sample("p", "no commas here", {"instruction_id_list": ["punctuation:no_comma"]})])
    assert v.verdict == "pass"
    assert time.monotonic() - start < 3.0  # workers respawned at the deadline



@pytest.mark.slow
def test_8_mib_responses_answer_within_the_default_limit():
    """At the body limit the checks, linear as they are, can outlast the limit: they answer error then."""
    n = BODY_LIMIT - 4096
    texts = {k: v for k, v in corpus(n).items() if k.startswith(("run '?'", "run '['", "run '<'", "repeat '. '",
                                                                  "repeat '*\\n'", "final answer", "unclosed",
                                                                  "a., spaces", "run '\\n'", "run 'a'"))}
    with InstructionsJudge(workers=2) as instructions, MathJudge(workers=2) as math:
        limit_s = instructions.timeout_s
        for label, text in texts.items():
            for judge, samples in ((instructions, samples_for(text)["instructions"]),
                                   (math, samples_for(text)["math"][:1])):
                start = time.monotonic()
                verdicts = judge.judge(samples)
                # Items run in parallel on 2 workers; each is bounded by the limit (+ a respawn).
                assert time.monotonic() - start < len(samples) * (limit_s + SLACK_S), label
                for v in verdicts:
                    assert v.verdict in ("pass", "fail", "error"), (label, v)
                    if v.verdict == "error":
                        assert "timed out" in v.detail["error"] or v.detail.get("method") == "math_verify", v


# ---------------------------------------------------------------- the service stays healthy

NEVER_ENDS = "The final answer is $9^{9^{9}}$."  # math-verify evaluates the power: minutes


def item(response: str, judge: str, **metadata) -> dict:
    return {"prompt": "p", "response": response, "judges": [judge], "metadata": metadata}


def reported_inputs(scale: int) -> list[dict]:
    """The inputs of the issue (5-18 s each before), at ``scale`` times their size."""
    capitals = {"instruction_id_list": ["change_case:capital_word_frequency"],
                "kwargs": [{"capital_frequency": 1, "capital_relation": "at least"}]}
    return [
        item("The final answer is -" + " " * (110 * scale) + "!", "math", answer="1"),
        item("The final answer is 1" + " " * (20_000 * scale) + "!", "math", answer="1"),
        item("\\boxed{" * (8_000 * scale), "math", answer="1"),
        item("[" * (60_000 * scale), "instructions", instruction_id_list=["detectable_content:number_placeholders"],
             kwargs=[{"num_placeholders": 1}]),
        item("\n" * (60_000 * scale) + "x", "instructions",
             instruction_id_list=["detectable_format:number_bullet_lists"], kwargs=[{"num_bullets": 1}]),
        item("<" * (100_000 * scale), "instructions", instruction_id_list=["detectable_format:title"]),
        item("a." + " " * (50_000 * scale) + "b", "instructions", **capitals),
    ]


class HealthProbe:
    """Polls /healthz from a thread and records how long each answer took."""

    def __init__(self, base: str) -> None:
        self.base, self.latencies_s, self.failures = base, [], []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        with httpx.Client(base_url=self.base, timeout=5) as client:
            while not self._stop.wait(0.02):
                start = time.monotonic()
                try:
                    ok = client.get("/healthz").status_code == 200
                except httpx.HTTPError as exc:
                    ok, self.failures = False, [*self.failures, repr(exc)]
                self.latencies_s.append(time.monotonic() - start if ok else float("inf"))


@pytest.fixture
def gateway(subprocess_env):
    port = free_port()
    env = dict(subprocess_env, CGPO_JUDGES_ENABLED="math,instructions,refusal", CGPO_JUDGES_PROCESSES="2",
               CGPO_LOG_LEVEL="warning")
    proc = spawn(["judges", "serve", "--port", str(port)], env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: answers_200(f"{base}/readyz"), 120, "the judges gateway to be ready")
        yield base
    finally:
        stop(proc)


def post(client: httpx.Client, items: list[dict], timeout_s: float) -> tuple[httpx.Response, float]:
    start = time.monotonic()
    response = client.post("/v1/judge", json={"items": items}, headers={"X-Timeout-S": str(timeout_s)})
    return response, time.monotonic() - start


@pytest.mark.slow
def test_health_answers_while_pathological_batches_run_and_deadlines_stop_work(gateway):
    every_loose = {**EVERY_INSTRUCTION, "strict": False}
    huge = "*\n" + "? " * 3_950_000 + "\n*"  # 7.9 MB, seconds per loose variant
    small = [item("The final answer is 7.", "math", answer=7),
             item("<<Title>> no commas here", "instructions", instruction_id_list=["detectable_format:title"]),
             item("I'm sorry, but I can't help with that.", "refusal")]
    with httpx.Client(base_url=gateway, timeout=60) as client, HealthProbe(gateway) as probe:
        response, elapsed = post(client, reported_inputs(10), 30)
        assert response.status_code == 200, response.text
        assert elapsed < 10  # extraction is instant; math-verify gets its 5 s on the "1 ... !" answer (1! = 1)
        verdicts = [next(iter(r["verdicts"].values())) for r in response.json()["results"]]
        assert [v["verdict"] for v in verdicts[3:]] == ["fail"] * 4
        assert [v["verdict"] for v in verdicts[:3]] in (["fail", "error", "fail"], ["fail", "pass", "fail"])

        # Past the deadline nobody waits: the work stops there, and the next request is served at once.
        response, elapsed = post(client, [item(NEVER_ENDS, "math", answer="1")] * 30, 2)  # 30 x 5 s of math-verify
        assert response.status_code == 504 and elapsed < 3
        response, elapsed = post(client, [item(huge, "instructions", **every_loose)], 2)
        assert response.status_code == 504 and elapsed < 3
        response, elapsed = post(client, small, 10)
        assert response.status_code == 200 and elapsed < 3, response.text
        verdicts = [r["verdicts"][i["judges"][0]]["verdict"] for r, i in zip(response.json()["results"], small)]
        assert verdicts == ["pass", "pass", "fail"]  # the refusal fails refusal's default mode, must_not_refuse
    assert not probe.failures
    assert len(probe.latencies_s) > 100
    assert max(probe.latencies_s) < HEALTH_BOUND_S, sorted(probe.latencies_s)[-5:]
