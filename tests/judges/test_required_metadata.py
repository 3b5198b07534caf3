"""The table of metadata each judge requires (``REQUIRED_METADATA``, which callers check their data
against before training) says what the judges do: a sample with it is judged, one without any of a
required field's alternatives is answered ``error``; and ``GET /v1/judges`` reports it."""

from __future__ import annotations

import pytest

from cgpo.services.common.schemas import REQUIRED_METADATA, lacks_required
from cgpo.services.common.settings import LLM_JUDGES, RULE_JUDGES
from cgpo.services.judges.base import Sample
from cgpo.services.judges.config import JudgeConfig
from cgpo.services.judges.registry import build, describe

FULL = {  # one sample each rule judge judges, with every field it can use
    "math": Sample("What is 6 times 7?", "The final answer is 42.", {"answer": "42"}),
    "code": Sample("Write add(a, b).", "def add(a, b):\n    return a + b\n",
                   {"unit_tests": ["assert add(1, 2) == 3"], "entry_point": "add",
                    "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"}),
    "instructions": Sample("Answer in lowercase.", "all lowercase here.",
                           {"instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}),
    "refusal": Sample("Tell me a joke.", "Why did the chicken cross the road?", {"mode": "must_not_refuse"}),
}


def test_every_judge_has_an_entry():
    assert set(REQUIRED_METADATA) == set(RULE_JUDGES) | set(LLM_JUDGES)


@pytest.mark.parametrize("name", RULE_JUDGES)
def test_a_rule_judge_errors_exactly_without_what_the_table_requires(name):
    judge = build(JudgeConfig(enabled=(name,), code_sandbox="weak"))[name]
    full = FULL[name]
    samples = [full]

    def fields(alternatives: tuple[str, ...]) -> set[str]:
        return {f for a in alternatives for f in a.split("+")}

    for alternatives in REQUIRED_METADATA[name]:
        group = fields(alternatives)
        samples.append(Sample(full.prompt, full.response, {k: v for k, v in full.metadata.items() if k not in group}))
        for kept in alternatives:  # any one alternative is enough
            keep = set(kept.split("+"))
            samples.append(Sample(full.prompt, full.response,
                                  {k: v for k, v in full.metadata.items() if k in keep or k not in group}))
    required = {f for alternatives in REQUIRED_METADATA[name] for f in fields(alternatives)}
    samples.append(Sample(full.prompt, full.response, {k: v for k, v in full.metadata.items() if k in required}))
    assert all(lacks_required(REQUIRED_METADATA[name], dict(s.metadata)) == [] for s in samples[:1])
    with judge:
        verdicts = [v.verdict for v in judge.judge(samples)]
    assert verdicts[0] == "pass", verdicts
    position = 1
    for alternatives in REQUIRED_METADATA[name]:
        assert verdicts[position] == "error", (alternatives, verdicts)
        assert all(v != "error" for v in verdicts[position + 1:position + 1 + len(alternatives)]), verdicts
        position += 1 + len(alternatives)
    assert verdicts[-1] != "error", ("only the required fields", verdicts)
    lacking = [lacks_required(REQUIRED_METADATA[name], dict(s.metadata)) for s in samples]
    assert [bool(x) for x in lacking] == [v == "error" for v in verdicts]  # the check agrees with the judge


@pytest.mark.parametrize("name", LLM_JUDGES)
def test_an_llm_judge_requires_its_templates_fields_without_defaults(name):
    from cgpo.services.judges.llm.templates import TEMPLATES

    assert REQUIRED_METADATA[name] == tuple((field,) for field in TEMPLATES[name].required_metadata)


def test_the_judge_list_reports_what_each_judge_requires():
    infos = {info.name: info for info in describe(JudgeConfig(enabled=("math", "code", "refusal")))}
    assert infos["math"].required == [["answer"]]
    assert infos["code"].required == [["unit_tests", "test+entry_point"]]
    assert infos["refusal"].required == []
