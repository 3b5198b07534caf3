"""The ``instructions`` judge: IFEval's 25 instruction types, strict and loose.

Edge cases per type (relation boundaries, blank responses, loose vs strict),
malformed metadata, parity of our Punkt / Treebank / langdetect code with the
libraries IFEval uses, and IFEval's GPT-4 responses (the published figures).
"""

from __future__ import annotations

import json
import random
import re
import string
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import langdetect
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langdetect import DetectorFactory

from cgpo.services.judges.base import Sample
from cgpo.services.judges.instructions import INSTRUCTIONS, InstructionsJudge, catalog, checks, sentences, text
from cgpo.services.judges.instructions.judge import follows, loose_variants
from cgpo.services.judges.instructions.language import detect_language
from cgpo.services.judges.instructions.sentences import count_sentences, split_sentences
from cgpo.services.judges.instructions.text import count_capital_words, count_words, treebank_tokens

DATA = Path(__file__).resolve().parents[2] / "data" / "ifeval"


@pytest.fixture(scope="module")
def judge() -> Iterator[InstructionsJudge]:
    with InstructionsJudge(workers=2) as j:
        yield j


def check(judge, response, instruction_id, kwargs=None, strict=True, prompt=""):
    """The verdict for one instruction: True (pass), False (fail); errors fail the test."""
    metadata = {"instruction_id_list": [instruction_id], "kwargs": [kwargs or {}], "strict": strict}
    verdict = judge.judge([Sample(prompt, response, metadata)])[0]
    assert verdict.verdict != "error", verdict.detail
    return verdict.verdict == "pass"


def test_all_25_ifeval_types_are_known():
    assert len(INSTRUCTIONS) == 25
    assert {i.split(":")[0] for i in INSTRUCTIONS} == {
        "keywords", "language", "length_constraints", "detectable_content", "detectable_format",
        "combination", "startend", "change_case", "punctuation",
    }


# ---------------------------------------------------------------- one table of edge cases per type

CASES = [
    # (instruction id, kwargs, response, followed in strict mode)
    ("punctuation:no_comma", {}, "no commas here", True),
    ("punctuation:no_comma", {}, "one, two", False),
    ("length_constraints:number_words", {"num_words": 3, "relation": "at least"}, "one two three", True),
    ("length_constraints:number_words", {"num_words": 3, "relation": "at least"}, "one two", False),
    ("length_constraints:number_words", {"num_words": 3, "relation": "less than"}, "one two", True),
    ("length_constraints:number_words", {"num_words": 3, "relation": "less than"}, "one two three", False),
    ("length_constraints:number_words", {"num_words": 3, "relation": "at least"}, "don't stop", True),  # \w+: don, t
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "at least"},
     "Dr. Smith went home. He was tired.", True),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"},
     "Dr. Smith went home. He was tired.", False),
    ("length_constraints:number_sentences", {"num_sentences": 2, "relation": "less than"},
     "Dr. Smith went home and slept", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "a\n***\nb", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "***\na\n***\nb\n***", True),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2}, "a\n***\n***\nb", False),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 3}, "a\n***\nb", False),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "Hello"},
     "Intro\n\nHello, world", True),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "hello"},
     "Intro\n\n\"Hello\" there", True),
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "hello"},
     "Intro\n\nGoodbye", False),
    # IFEval indexes the nth piece among all "\n\n" pieces, blank ones included
    ("length_constraints:nth_paragraph_first_word", {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "hello"},
     "Intro\n\n\n\nHello", False),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "[name] at [address]", True),
    ("detectable_content:number_placeholders", {"num_placeholders": 2}, "[name] at address", False),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi\nP.S. bye", True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi\np. s. bye", True),
    ("detectable_content:postscript", {"postscript_marker": "P.S."}, "Hi\nPS bye", False),
    ("detectable_content:postscript", {"postscript_marker": "P.P.S"}, "Hi\nP.P.S bye", True),
    ("detectable_content:postscript", {"postscript_marker": "Note:"}, "Hi\nNOTE: bye", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* a\n* b", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "- a\n  * b", True),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "**bold**\n* a", False),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2}, "* a\n* b\n* c", False),
    ("detectable_format:constrained_response", {}, "My answer is yes.", True),
    ("detectable_format:constrained_response", {}, "My answer is Yes.", False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*a* and *b*", True),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2}, "*a* and * *", False),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 1}, "**bold**", True),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "Section 1\nfoo\nSection 2\nbar", True),
    ("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2},
     "SECTION 1\nfoo\nSECTION 2\nbar", False),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', True),
    ("detectable_format:json_format", {}, '  {"a": [1, 2]}  ', True),
    ("detectable_format:json_format", {}, 'Here: {"a": 1}', False),
    ("detectable_format:json_format", {}, "[" * 100_000, False),
    ("detectable_format:title", {}, "<<Joy>>\ntext", True),
    ("detectable_format:title", {}, "<< >> text", False),
    ("detectable_format:title", {}, "<<a\nb>>", False),
    ("combination:two_responses", {}, "A\n******\nB", True),
    ("combination:two_responses", {}, "******\nA\n******\nB\n******", True),
    ("combination:two_responses", {}, "A\n******\n A ", False),
    ("combination:two_responses", {}, "A\n******\n******\nB", False),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."}, "write a poem. Roses...", True),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a poem."}, "Sure! Write a poem.", False),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, 'Done. any other questions?"', True),
    ("startend:end_checker", {"end_phrase": "Any other questions?"}, "Any other questions? Bye.", False),
    ("startend:quotation", {}, ' "hi" ', True),
    ("startend:quotation", {}, '"', False),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "DON'T stop", True),  # DO + N'T
    ("change_case:capital_word_frequency", {"capital_frequency": 3, "capital_relation": "at least"},
     "AI-POWERED tools from a CEO's desk", False),  # 2: AI-POWERED is one token, CEO's gives CEO
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"},
     "Only ONE here", True),
    ("change_case:english_capital", {}, "HELLO THERE, HOW ARE YOU DOING TODAY? I AM FINE.", True),
    ("change_case:english_capital", {}, "HELLO THERE, how are you?", False),
    ("change_case:english_lowercase", {}, "hello there, how are you doing today? i am fine.", True),
    ("change_case:english_lowercase", {}, "bonjour, je m'appelle marie et j'habite à paris depuis dix ans.", False),
    ("keywords:existence", {"keywords": ["cat", "dog"]}, "Cats and DOGS", True),
    ("keywords:existence", {"keywords": ["cat", "dog"]}, "cats only", False),
    ("keywords:existence", {"keywords": ["c++"]}, "I like C++.", True),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "at least"}, "cat CAT", True),
    ("keywords:frequency", {"keyword": "cat", "frequency": 2, "relation": "less than"}, "catcat", False),
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "a category", True),
    ("keywords:forbidden_words", {"forbidden_words": ["cat"]}, "the Cat sat", False),
    ("keywords:letter_frequency", {"letter": "A", "let_frequency": 3, "let_relation": "at least"}, "Banana", True),
    ("keywords:letter_frequency", {"letter": "a", "let_frequency": 3, "let_relation": "less than"}, "Banana", False),
    ("keywords:letter_frequency", {"letter": "#", "let_frequency": 2, "let_relation": "at least"}, "#a #b", True),
    ("language:response_language", {"language": "fr"},
     "Bonjour, je m'appelle Marie et j'habite à Paris depuis dix ans.", True),
    ("language:response_language", {"language": "fr"}, "Hello, my name is Mary and I live in London.", False),
    ("language:response_language", {"language": "fr"}, "12345 !!!", True),  # no features: IFEval passes it
]


@pytest.mark.parametrize(("instruction_id", "kwargs", "response", "expected"), CASES)
def test_instruction_semantics(judge, instruction_id, kwargs, response, expected):
    assert check(judge, response, instruction_id, kwargs) is expected


def test_every_type_has_a_passing_and_a_failing_case():
    seen = Counter((case[0], case[3]) for case in CASES)
    for instruction_id in INSTRUCTIONS:
        assert seen[(instruction_id, True)] and seen[(instruction_id, False)], instruction_id


@pytest.mark.parametrize("relation", ["at least", "less than"])
@pytest.mark.parametrize("n_words", [4, 5, 6])
def test_relation_boundaries(judge, relation, n_words):
    response = " ".join(["word"] * n_words)
    kwargs = {"num_words": 5, "relation": relation}
    expected = n_words >= 5 if relation == "at least" else n_words < 5
    assert check(judge, response, "length_constraints:number_words", kwargs) is expected


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("response", ["", "   \n\t "])
def test_blank_response_follows_nothing(judge, response, strict):
    assert not check(judge, response, "punctuation:no_comma", strict=strict)
    assert not check(judge, response, "keywords:forbidden_words", {"forbidden_words": ["x"]}, strict=strict)


# ---------------------------------------------------------------- loose mode

LOOSE_CASES = [
    # (instruction id, kwargs, response): fails strict, passes loose
    ("punctuation:no_comma", {}, "Sure, here you go:\nno commas in this part"),
    ("startend:quotation", {}, '**"quoted"**'),
    ("change_case:english_lowercase", {}, "hope this message finds you well and happy.\n\nbest,\n[Your Name]"),
    ("startend:end_checker", {"end_phrase": "Bye."}, "Text. Bye.\nLet me know if you need more!"),
    ("detectable_format:json_format", {}, 'Here is the JSON:\n{"a": 1}'),
]


@pytest.mark.parametrize(("instruction_id", "kwargs", "response"), LOOSE_CASES)
def test_loose_forgives_first_line_last_line_and_asterisks(judge, instruction_id, kwargs, response):
    assert not check(judge, response, instruction_id, kwargs, strict=True)
    assert check(judge, response, instruction_id, kwargs, strict=False)


def test_loose_fails_when_no_variant_follows(judge):
    assert not check(judge, "a, b\nc, d\ne, f", "punctuation:no_comma", strict=False)


def test_loose_variants_are_ifevals_eight():
    variants = loose_variants("first *line*\nmiddle\nlast")
    assert variants == [
        "first *line*\nmiddle\nlast", "first line\nmiddle\nlast",
        "middle\nlast", "first *line*\nmiddle", "middle",
        "middle\nlast", "first line\nmiddle", "middle",
    ]


# ---------------------------------------------------------------- verdict shape and metadata


def test_verdict_detail_lists_every_instruction_in_order(judge):
    metadata = {
        "instruction_id_list": ["punctuation:no_comma", "detectable_format:title", "startend:quotation"],
        "kwargs": [{}, {}, {}],
    }
    verdict = judge.judge([Sample("p", "<<T>> no commas", metadata)])[0]
    assert verdict.verdict == "fail"
    assert verdict.detail == {
        "followed": [True, True, False],
        "instruction_ids": metadata["instruction_id_list"],
        "mode": "strict",
        "failed_ids": ["startend:quotation"],
    }
    metadata["strict"] = False
    ok = judge.judge([Sample("p", '"<<T>> no commas"', metadata)])[0]
    assert ok.verdict == "pass" and ok.detail["mode"] == "loose" and "failed_ids" not in ok.detail


def test_hugging_face_style_kwargs_with_null_keys(judge):
    kwargs = {"num_words": 2, "relation": "at least", "num_highlights": None, "keywords": None, "language": None}
    assert check(judge, "two words", "length_constraints:number_words", kwargs)


def test_kwargs_may_be_omitted_when_no_instruction_takes_arguments(judge):
    metadata = {"instruction_id_list": ["punctuation:no_comma"]}
    assert judge.judge([Sample("p", "fine", metadata)])[0].verdict == "pass"


BAD_METADATA = [
    ({}, "instruction_id_list"),
    ({"instruction_id_list": "punctuation:no_comma"}, "instruction_id_list"),
    ({"instruction_id_list": []}, "instruction_id_list"),
    ({"instruction_id_list": ["punctuation:no_commas"], "kwargs": [{}]}, "unknown instruction id"),
    ({"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}, {}]}, "2 entries for 1"),
    ({"instruction_id_list": ["punctuation:no_comma"], "kwargs": {}}, "kwargs must be a list"),
    ({"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}], "strict": "yes"}, "strict"),
    ({"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{"num_words": 3}]}, "unexpected kwargs"),
    ({"instruction_id_list": ["length_constraints:number_words"], "kwargs": [{"relation": "at least"}]},
     "missing kwarg 'num_words'"),
    ({"instruction_id_list": ["length_constraints:number_words"],
      "kwargs": [{"num_words": "300", "relation": "at least"}]}, "integer"),
    ({"instruction_id_list": ["length_constraints:number_words"],
      "kwargs": [{"num_words": True, "relation": "at least"}]}, "integer"),
    ({"instruction_id_list": ["length_constraints:number_words"],
      "kwargs": [{"num_words": -1, "relation": "at least"}]}, "integer"),
    ({"instruction_id_list": ["length_constraints:number_words"],
      "kwargs": [{"num_words": 3, "relation": "at most"}]}, "'at least'"),
    ({"instruction_id_list": ["keywords:existence"], "kwargs": [{"keywords": "cat"}]}, "list"),
    ({"instruction_id_list": ["keywords:letter_frequency"],
      "kwargs": [{"letter": "ab", "let_frequency": 2, "let_relation": "at least"}]}, "single character"),
    ({"instruction_id_list": ["language:response_language"], "kwargs": [{"language": "xx"}]}, "language code"),
    ({"instruction_id_list": ["startend:end_checker"], "kwargs": [{"end_phrase": "  "}]}, "non-blank"),
    ({"instruction_id_list": ["length_constraints:nth_paragraph_first_word"],
      "kwargs": [{"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "a"}]}, "nth_paragraph"),
]


@pytest.mark.parametrize(("metadata", "message"), BAD_METADATA)
def test_malformed_metadata_is_an_error_verdict(judge, metadata, message):
    good = Sample("p", "fine", {"instruction_id_list": ["punctuation:no_comma"]})
    verdicts = judge.judge([good, Sample("p", "fine", metadata), good])
    assert [v.verdict for v in verdicts] == ["pass", "error", "pass"]
    assert message in verdicts[1].detail["error"]


# ---------------------------------------------------------------- parity with IFEval's libraries

# Expected values are NLTK 3.8.1's: sent_tokenize (English Punkt) and NLTKWordTokenizer.
PUNKT_CASES = [
    ("Dr. Smith went home. He was tired.", ["Dr. Smith went home.", "He was tired."]),
    ("Very bad acting!!! I promise.", ["Very bad acting!!!", "I promise."]),
    ("(Sent1.) Sent2.", ["(Sent1.)", "Sent2."]),
    ("I met J. K. Rowling. She was nice.", ["I met J. K. Rowling.", "She was nice."]),
    ("See item no. 5. Then stop.", ["See item no.", "5.", "Then stop."]),
    ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
    ("Wait... what? Really!", ["Wait... what?", "Really!"]),
    ("P.S. I love you. P.P.S. Me too.", ["P.S.", "I love you.", "P.P.S.", "Me too."]),
    ("1. First item.\n2. Second item.", ["1.", "First item.", "2.", "Second item."]),
    ("Is it “Happy Birthday.”\n\nYour answer must contain a title.",
     ["Is it “Happy Birthday.”\n\nYour answer must contain a title."]),
    ("e.g. this one. i.e. that one.", ["e.g.", "this one.", "i.e.", "that one."]),
    ("The meeting is at 3 p.m. tomorrow. Don't be late.", ["The meeting is at 3 p.m. tomorrow.", "Don't be late."]),
    ("What?! No way!!! OK.", ["What?!", "No way!!!", "OK."]),
    ("It was Sept. 5th. We went home.", ["It was Sept. 5th.", "We went home."]),
    ("Hello world", ["Hello world"]),
    ("   ", []),
]


@pytest.mark.parametrize(("text", "sentences"), PUNKT_CASES)
def test_sentences_match_nltk_punkt(text, sentences):
    assert split_sentences(text) == sentences
    assert count_sentences(text) == len(sentences)


TREEBANK_CASES = [
    ("DON'T stop", ["DO", "N'T", "stop"]),
    ("CEO's plan", ["CEO", "'s", "plan"]),
    ("AI-POWERED tools", ["AI-POWERED", "tools"]),
    ("A&B, C:D", ["A", "&", "B", ",", "C", ":", "D"]),
    ('"HELLO," SHE SAID.', ["``", "HELLO", ",", "''", "SHE", "SAID", "."]),
    ("I cannot GO; gonna WIN!", ["I", "can", "not", "GO", ";", "gon", "na", "WIN", "!"]),
    ("It's 'TWAS night", ["It", "'s", "'T", "WAS", "night"]),
    ("U.S.A. (USA) [NASA] {X}", ["U.S.A.", "(", "USA", ")", "[", "NASA", "]", "{", "X", "}"]),
    ("HELLO...WORLD--NOW", ["HELLO", "...", "WORLD", "--", "NOW"]),
    ("can't won't I'M YOU'RE", ["ca", "n't", "wo", "n't", "I", "'M", "YOU", "'RE"]),
    ("“QUOTE” ‘Q’ «G»", ["“", "QUOTE", "”", "‘", "Q", "’", "«", "G", "»"]),
    ("x,y 3,000 a:b 10:30", ["x", ",", "y", "3,000", "a", ":", "b", "10:30"]),
]


@pytest.mark.parametrize(("text", "tokens"), TREEBANK_CASES)
def test_treebank_tokens_match_nltk(text, tokens):
    assert treebank_tokens(text) == tokens


def test_word_counts():
    assert count_words("state-of-the-art, don't") == 6
    assert count_words("") == 0
    assert count_capital_words("THE U.S. ARMY. It is BIG.") == 4  # THE, U.S., ARMY, BIG


def _reference_detect(text: str) -> str | None:
    try:
        return langdetect.detect(text)
    except langdetect.LangDetectException:
        return None


def test_language_detection_is_langdetect_with_seed_0(monkeypatch):
    monkeypatch.setattr(DetectorFactory, "seed", 0)
    texts = [
        "Bonjour, je m'appelle Marie.", "こんにちは、元気ですか？", "Привет, как дела?", "Xin chào, bạn khỏe không?",
        "Visit https://example.com or mail a@b.org now, thanks", "Hello   there\n\nGENERAL KENOBI", "", "123 !!",
        "안녕하세요 반갑습니다", "مرحبا كيف حالك", "नमस्ते आप कैसे हैं", "Γειά σου κόσμε", "ok ПРИВЕТ 中文 mixed",
    ]
    rng = random.Random(0)
    alphabet = "abcdeXYZ  éüßñ.,!'\n0123абвгАБВ中文字のテキストカ한국ไทยعربيहिΑΒαβắẠ\u0301"
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(300)]
    if DATA.is_dir():  # every response the IFEval data sends to langdetect in strict mode
        language_ids = {"language:response_language", "change_case:english_capital", "change_case:english_lowercase"}
        texts += [r for _, r, m in _ifeval_rows() if language_ids & set(m["instruction_id_list"])]
    assert [detect_language(t) for t in texts] == [_reference_detect(t) for t in texts]


# ---------------------------------------------------------------- IFEval's GPT-4 responses


def _ifeval_rows() -> list[tuple[str, str, dict]]:
    inputs = [json.loads(line) for line in (DATA / "input_data.jsonl").read_text().splitlines()]
    responses = [
        json.loads(line) for line in (DATA / "input_response_data_gpt4_20231107_145030.jsonl").read_text().splitlines()
    ]
    assert [r["prompt"] for r in responses] == [i["prompt"] for i in inputs]
    return [
        (i["prompt"], r["response"], {"instruction_id_list": i["instruction_id_list"], "kwargs": i["kwargs"]})
        for i, r in zip(inputs, responses)
    ]


@pytest.fixture(scope="module")
def gpt4_followed(judge) -> dict[str, list[tuple[list[str], list[bool]]]]:
    rows = _ifeval_rows()
    out = {}
    for mode, strict in (("strict", True), ("loose", False)):
        verdicts = judge.judge([Sample(p, r, {**m, "strict": strict}) for p, r, m in rows])
        assert all(v.verdict != "error" for v in verdicts)
        out[mode] = [(m["instruction_id_list"], v.detail["followed"]) for (_, _, m), v in zip(rows, verdicts)]
    return out


def test_ifeval_gpt4_accuracies(gpt4_followed):
    """The four IFEval accuracies on the GPT-4 responses of 2023-11-07.

    The paper reports prompt/instruction strict 76.89% / 83.57% (416/541, 697/834)
    and loose 79.30% / 85.37% (429/541, 712/834). IFEval's code of the time is
    not deterministic, and the difference is exactly that:

    * langdetect was not seeded, so the language and case checks (run on up to
      8 variants in loose mode) vary from run to run: repeated runs of IFEval's
      code give loose 429-431 prompts and 712-714 instructions;
    * ``keywords:letter_frequency`` then accepted only a-z and silently drew a
      *random* letter for "#" (key 1122) and "!" (key 1129); IFEval now counts
      the given character, as we do: both responses follow their instruction.

    With langdetect seeded (0) and the current letter rule, IFEval's own code
    gives exactly our figures, instruction by instruction.
    """
    totals = {}
    for mode, rows in gpt4_followed.items():
        prompts = sum(all(followed) for _, followed in rows)
        instructions = sum(sum(followed) for _, followed in rows)
        assert sum(len(followed) for _, followed in rows) == 834
        totals[mode] = (prompts, instructions)
    assert totals == {"strict": (417, 698), "loose": (431, 714)}
    assert round(417 / 541 * 100, 2) == 77.08 and round(698 / 834 * 100, 2) == 83.69
    assert round(431 / 541 * 100, 2) == 79.67 and round(714 / 834 * 100, 2) == 85.61


# instruction id -> (count, followed strict, followed loose) on the GPT-4 responses
PER_TYPE = {
    "change_case:capital_word_frequency": (25, 17, 19),
    "change_case:english_capital": (25, 19, 19),
    "change_case:english_lowercase": (39, 36, 37),
    "combination:repeat_prompt": (41, 26, 26),
    "combination:two_responses": (24, 22, 24),
    "detectable_content:number_placeholders": (27, 25, 25),
    "detectable_content:postscript": (26, 26, 26),
    "detectable_format:constrained_response": (10, 8, 8),
    "detectable_format:json_format": (17, 17, 17),
    "detectable_format:multiple_sections": (14, 13, 13),
    "detectable_format:number_bullet_lists": (31, 27, 27),
    "detectable_format:number_highlighted_sections": (48, 45, 45),
    "detectable_format:title": (37, 37, 37),
    "keywords:existence": (39, 38, 38),
    "keywords:forbidden_words": (49, 42, 44),
    "keywords:frequency": (42, 38, 39),
    "keywords:letter_frequency": (33, 21, 21),
    "language:response_language": (31, 30, 30),
    "length_constraints:nth_paragraph_first_word": (12, 9, 11),
    "length_constraints:number_paragraphs": (27, 23, 23),
    "length_constraints:number_sentences": (52, 35, 35),
    "length_constraints:number_words": (52, 37, 39),
    "punctuation:no_comma": (66, 44, 48),
    "startend:end_checker": (26, 22, 22),
    "startend:quotation": (41, 41, 41),
}


def test_ifeval_gpt4_per_instruction_type(gpt4_followed):
    """Per type, as IFEval's own code (seeded, current letter rule) scores them."""
    counts: Counter = Counter()
    strict_ok: Counter = Counter()
    loose_ok: Counter = Counter()
    for (ids, strict), (_, loose) in zip(gpt4_followed["strict"], gpt4_followed["loose"]):
        for instruction_id, s, loose_followed in zip(ids, strict, loose):
            counts[instruction_id] += 1
            strict_ok[instruction_id] += s
            loose_ok[instruction_id] += loose_followed
            assert loose_followed or not s, instruction_id  # loose never loses what strict grants
    got = {i: (counts[i], strict_ok[i], loose_ok[i]) for i in counts}
    assert got == PER_TYPE


# ---------------------------------------------------------------- linear time, IFEval's matches
# IFEval's patterns (and NLTK's two final-period rules) backtrack quadratically on long runs.
# Ours are rewritten to run in one pass; on strings small enough for the originals, every
# count and token list must equal what the original patterns give.

SAME = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
IFEVAL_PLACEHOLDER = re.compile(r"\[.*?\]")
IFEVAL_STAR_BULLET = re.compile(r"^\s*\*[^\*].*$", re.MULTILINE)
IFEVAL_DASH_BULLET = re.compile(r"^\s*-.*$", re.MULTILINE)
IFEVAL_HIGHLIGHT = re.compile(r"\*[^\n\*]*\*")
IFEVAL_BOLD = re.compile(r"\*\*[^\n\*]*\*\*")
IFEVAL_TITLE = re.compile(r"<<[^\n]+>>")
NLTK_FINAL_PERIOD = re.compile(r"([^\.])(\.)([\]\)}>\"\'»”’ ]*)\s*$")
NLTK_FINAL_PERIOD_2 = re.compile(r"([^\.])(\.)([\]\)}>\"\']*)\s*$")
SPACES = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\xa0", "\u2028", "\u3000"]


def strings(alphabet: str | list[str], max_size: int = 40):
    return st.text(alphabet=st.sampled_from(list(alphabet)), max_size=max_size)


@SAME
@given(strings(["[", "]", "\n", "a", " ", "\r"]))
def test_placeholders_count_as_ifeval_counts(response):
    for n in range(4):
        expected = len(IFEVAL_PLACEHOLDER.findall(response)) >= n
        assert checks.number_placeholders(checks.Response(response), n) is expected


@SAME
@given(strings(["*", "-", "a", *SPACES]))
def test_bullets_count_as_ifeval_counts(response):
    expected = len(IFEVAL_STAR_BULLET.findall(response)) + len(IFEVAL_DASH_BULLET.findall(response))
    assert checks.number_bullet_lists(checks.Response(response), expected)


@SAME
@given(strings(["*", "a", " ", "\n"]))
def test_highlights_count_as_ifeval_counts(response):
    single = sum(1 for h in IFEVAL_HIGHLIGHT.findall(response) if h.strip("*").strip())
    double = sum(1 for h in IFEVAL_BOLD.findall(response) if h[2:-2].strip())
    r = checks.Response(response)
    assert checks.number_highlighted_sections(r, single + double)
    assert not checks.number_highlighted_sections(r, single + double + 1)


def tokens(pieces: list[str], max_size: int = 12):
    return st.lists(st.sampled_from(pieces), max_size=max_size).map("".join)


@SAME
@given(st.one_of(strings(["<", ">", "a", " ", "\t", "\n", "\u3000"]),
                 tokens(["<<", ">>", "<", ">", "a", " ", "\n", "\t", "<< >>", "<<a>>"])))
def test_title_as_ifeval_finds_it(response):
    expected = any(t.lstrip("<").rstrip(">").strip() for t in IFEVAL_TITLE.findall(response))
    assert checks.title(checks.Response(response)) is expected


def nltk_treebank_tokens(sentence: str) -> list[str]:
    """NLTK's rewrites: ours with the two final-period rules as NLTK writes them."""
    originals = {1: NLTK_FINAL_PERIOD, 6: NLTK_FINAL_PERIOD_2}
    punctuation = [(originals.get(i, pattern), repl) for i, (pattern, repl) in enumerate(text._PUNCTUATION, 1)]
    for pattern, replacement in [*text._STARTING_QUOTES, *punctuation]:
        sentence = pattern.sub(replacement, sentence)
    sentence = " " + sentence + " "
    for pattern, replacement in text._ENDING_QUOTES + text._CONTRACTIONS:
        sentence = pattern.sub(replacement, sentence)
    return sentence.split()


CLOSERS = [")", "]", "}", ">", "'", '"', "»", "”", "’"]
# Mostly sentences that end near a period: the rules are anchored at the end.
ENDINGS = st.tuples(
    strings([".", "a", "A", ",", ":", "?", "'", " "], 12), st.sampled_from(["", "a", ".", " "]), st.just("."),
    strings([*CLOSERS, " ", " ", "."], 8), strings([*SPACES, "b"], 4),
).map("".join)


@SAME
@given(st.one_of(ENDINGS, strings([".", "a", "A", *CLOSERS, ",", ":", "?", *SPACES], 30)))
def test_treebank_final_period_rules_as_nltk_writes_them(sentence):
    assert treebank_tokens(sentence) == nltk_treebank_tokens(sentence)


def test_treebank_tables_hold_the_possessive_rules():
    # The reference above swaps positions 1 and 6 of _PUNCTUATION; make sure those are the rules it means.
    assert text._PUNCTUATION[0][0].pattern == NLTK_FINAL_PERIOD.pattern.replace("]*)\\s*$", "]*+)\\s*+$")
    assert text._PUNCTUATION[5][0].pattern == NLTK_FINAL_PERIOD_2.pattern.replace("]*)\\s*$", "]*+)\\s*+$")


@SAME
@given(strings(["a", ".", *SPACES], 20), st.integers(0, 20), st.integers(0, 20))
def test_last_whitespace_is_nltks(context, start, end):
    # NLTK takes the last of any ASCII whitespace before a candidate boundary.
    expected = max(context.rfind(char, start, end) for char in string.whitespace)
    assert sentences._last_whitespace(context, start, end) == expected


@SAME
@given(strings(["a", "*", "\n", " ", "\r"], 20))
def test_loose_variants_are_ifevals_for_any_text(response):
    lines = response.split("\n")
    cut = ["\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    assert loose_variants(response) == [response, response.replace("*", ""), *cut, *(v.replace("*", "") for v in cut)]


# The reported inputs (5-15 s each before; hours at 10x), and their 10x.
PATHOLOGICAL = [
    ("detectable_content:number_placeholders", {"num_placeholders": 1}, lambda k: "[" * (60_000 * k)),
    ("detectable_format:number_bullet_lists", {"num_bullets": 1}, lambda k: "\n" * (60_000 * k) + "x"),
    ("detectable_format:title", {}, lambda k: "<" * (100_000 * k)),
    ("change_case:capital_word_frequency", {"capital_frequency": 1, "capital_relation": "at least"},
     lambda k: "a." + " " * (50_000 * k) + "b"),
]


@pytest.mark.parametrize(("instruction_id", "kwargs", "make"), PATHOLOGICAL, ids=[p[0] for p in PATHOLOGICAL])
@pytest.mark.parametrize("strict", [True, False])
def test_pathological_responses_take_linear_time(instruction_id, kwargs, make, strict):
    bound = [catalog.bind(0, instruction_id, kwargs)]
    for k in (1, 10):
        start = time.perf_counter()
        follows(make(k), bound, strict)
        assert time.perf_counter() - start < 0.5 * k, k


# ---------------------------------------------------------------- limits and deadlines


def test_an_item_over_the_time_limit_is_an_error():
    with InstructionsJudge(workers=1, timeout_s=0.2) as j:
        metadata = {"instruction_id_list": ["change_case:capital_word_frequency"],
                    "kwargs": [{"capital_frequency": 1, "capital_relation": "at least"}]}
        slow, quick = Sample("p", "a. b! " * 400_000, metadata), Sample("p", "FINE", metadata)
        verdicts = j.judge([slow, quick])
    assert verdicts[0].verdict == "error" and verdicts[0].detail["error"] == "instruction checks timed out after 0.2s"
    assert verdicts[1].verdict == "pass"
