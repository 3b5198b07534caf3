"""The 25 IFEval checkers (Zhou et al. 2023, "Instruction-Following Evaluation
for Large Language Models"), one function per instruction type.

Each checker takes a ``Response`` and the instruction's validated arguments and
says whether the response follows the instruction. The docstrings state IFEval's
definition; the counting primitives live in ``text``, ``sentences`` and
``language``. Relations are IFEval's two: ``"less than"`` (count < N) and
``"at least"`` (count >= N).

Where IFEval interpolates an argument into a regular expression unescaped
(keywords, forbidden words, a custom postscript marker, the section splitter)
we match it literally: identical on IFEval's data, and a keyword such as
"C++" or "e.g." means its letters, not a pattern.

Every check is linear in the response. Where IFEval's pattern backtracks
quadratically on a long run ("[" * 60000 with ``\\[.*?\\]``, newlines with
``^\\s*\\*[^\\*].*$``, "<" * 100000 with ``<<[^\\n]+>>``), the pattern here
finds the same matches in one pass; tests/judges/test_instructions.py checks
each against IFEval's on random strings.
"""

from __future__ import annotations

import functools
import json
import re

from cgpo.services.judges.instructions.language import detect_language
from cgpo.services.judges.instructions.sentences import count_sentences
from cgpo.services.judges.instructions.text import count_capital_words, count_words

LESS_THAN, AT_LEAST = "less than", "at least"
RELATIONS = (LESS_THAN, AT_LEAST)

# IFEval's \[.*?\] matches from a "[" to the first "]" on its line. Where there is none, no "["
# before the line's end has one either, so the failed attempt consumes them all (group 1 unset).
_PLACEHOLDER = re.compile(r"\[[^\]\n]*+(\])?")
# IFEval's ^\s*\*[^\*].*$ and ^\s*-.*$ (multiline): \s* crosses newlines, so every line start
# in a run of blank lines ends its whitespace at the same place and fails or matches the same way;
# a failed attempt consumes the run (group 1 unset) instead of retrying at each of its line starts.
_STAR_BULLET = re.compile(r"^\s*+(\*[^\*].*$)?", re.MULTILINE)
_DASH_BULLET = re.compile(r"^\s*+(-.*$)?", re.MULTILINE)
_HIGHLIGHT = re.compile(r"\*[^\n\*]*+\*")
_BOLD = re.compile(r"\*\*[^\n\*]*+\*\*")
_PARAGRAPH_DIVIDER = re.compile(r"\s?\*\*\*\s?")
# IFEval's <<[^\n]+>> matches at most once per line: from its first "<<" to its last ">>" (at
# least one character between). This finds each line's first "<<" and the rest of the line.
_TITLE_LINE = re.compile(r"<<[^\n]*+")
_PS = re.compile(r"p\.\s?s\.")
_PPS = re.compile(r"p\.\s?p\.\s?s")
_CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
_JSON_FENCES = ("```json", "```Json", "```JSON", "```")
_FIRST_WORD_STOP = frozenset(".,?!'\"")


class Response:
    """One response text as the checkers see it; costly counts are computed once."""

    def __init__(self, text: str) -> None:
        self.text = text

    @functools.cached_property
    def lower(self) -> str:
        return self.text.lower()

    @functools.cached_property
    def words(self) -> int:
        return count_words(self.text)

    @functools.cached_property
    def sentences(self) -> int:
        return count_sentences(self.text)

    @functools.cached_property
    def capital_words(self) -> int:
        return count_capital_words(self.text)

    @functools.cached_property
    def language(self) -> str | None:
        return detect_language(self.text)


def compare(count: int, relation: str, threshold: int) -> bool:
    """IFEval's relations: ``less than`` is count < threshold, ``at least`` is count >= threshold."""
    return count < threshold if relation == LESS_THAN else count >= threshold


# ---------------------------------------------------------------- keywords


def keyword_existence(r: Response, keywords: list[str]) -> bool:
    """keywords:existence -- every keyword occurs, case-insensitively (also inside longer words)."""
    return all(re.search(re.escape(k), r.text, re.IGNORECASE) for k in keywords)


def keyword_frequency(r: Response, keyword: str, frequency: int, relation: str) -> bool:
    """keywords:frequency -- non-overlapping case-insensitive occurrences of the keyword vs N."""
    return compare(len(re.findall(re.escape(keyword), r.text, re.IGNORECASE)), relation, frequency)


def forbidden_words(r: Response, forbidden_words: list[str]) -> bool:
    """keywords:forbidden_words -- no forbidden word occurs as a whole word (``\\bword\\b``, any case)."""
    return not any(re.search(rf"\b{re.escape(w)}\b", r.text, re.IGNORECASE) for w in forbidden_words)


def letter_frequency(r: Response, letter: str, let_frequency: int, let_relation: str) -> bool:
    """keywords:letter_frequency -- occurrences of the (lower-cased) letter in the lower-cased text vs N."""
    count = r.lower.count(letter) if len(letter) == 1 else 0  # IFEval counts characters
    return compare(count, let_relation, let_frequency)


# ---------------------------------------------------------------- language and case


def response_language(r: Response, language: str) -> bool:
    """language:response_language -- langdetect names the language; text without features passes."""
    return r.language is None or r.language == language


def english_capital(r: Response) -> bool:
    """change_case:english_capital -- ``text.isupper()`` and langdetect says English (or finds no features)."""
    return r.text.isupper() and r.language in (None, "en")


def english_lowercase(r: Response) -> bool:
    """change_case:english_lowercase -- ``text.islower()`` and langdetect says English (or finds no features)."""
    return r.text.islower() and r.language in (None, "en")


def capital_word_frequency(r: Response, capital_frequency: int, capital_relation: str) -> bool:
    """change_case:capital_word_frequency -- ``nltk.word_tokenize`` tokens that are ``isupper()`` vs N."""
    return compare(r.capital_words, capital_relation, capital_frequency)


# ---------------------------------------------------------------- length


def number_words(r: Response, num_words: int, relation: str) -> bool:
    """length_constraints:number_words -- ``\\w+`` words vs N."""
    return compare(r.words, relation, num_words)


def number_sentences(r: Response, num_sentences: int, relation: str) -> bool:
    """length_constraints:number_sentences -- Punkt (English) sentences vs N."""
    return compare(r.sentences, relation, num_sentences)


def number_paragraphs(r: Response, num_paragraphs: int) -> bool:
    """length_constraints:number_paragraphs -- exactly N paragraphs separated by ``***``.

    The text is split on ``\\s?\\*\\*\\*\\s?``; an empty first or last piece is
    not a paragraph, an empty piece in between fails the instruction.
    """
    pieces = _PARAGRAPH_DIVIDER.split(r.text)
    last = len(pieces) - 1
    count = len(pieces)
    for index, piece in enumerate(pieces):
        if not piece.strip():
            if index not in (0, last):
                return False
            count -= 1
    return count == num_paragraphs


def nth_paragraph_first_word(r: Response, num_paragraphs: int, nth_paragraph: int, first_word: str) -> bool:
    """length_constraints:nth_paragraph_first_word -- N paragraphs split by ``\\n\\n``, the nth starting with a word.

    Paragraphs are the pieces of ``text.split("\\n\\n")`` that are not blank;
    the nth is taken by position among *all* pieces (blank ones included), as
    IFEval does, and must not be blank. Its first word is its first
    whitespace-separated token, without leading quotes, cut at the first of
    ``. , ? ! ' "``, lower-cased.
    """
    pieces = r.text.split("\n\n")
    count = sum(1 for piece in pieces if piece.strip())
    if nth_paragraph > count:
        return False
    paragraph = pieces[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split(maxsplit=1)[0].lstrip("'").lstrip('"')
    first = []
    for char in word:
        if char in _FIRST_WORD_STOP:
            break
        first.append(char.lower())
    return count == num_paragraphs and "".join(first) == first_word


# ---------------------------------------------------------------- detectable content


def number_placeholders(r: Response, num_placeholders: int) -> bool:
    """detectable_content:number_placeholders -- at least N ``[...]`` placeholders (non-greedy, one line)."""
    return _PLACEHOLDER.findall(r.text).count("]") >= num_placeholders


def postscript(r: Response, postscript_marker: str) -> bool:
    """detectable_content:postscript -- the lower-cased text contains the marker.

    ``P.S.`` matches ``p.s.`` with an optional space after the first period
    (``p. s.``); ``P.P.S`` matches ``p.p.s`` with optional spaces after the
    periods; any other marker matches literally, case-insensitively.
    """
    if postscript_marker == "P.P.S":
        return _PPS.search(r.lower) is not None
    if postscript_marker == "P.S.":
        return _PS.search(r.lower) is not None
    return postscript_marker.lower() in r.lower


# ---------------------------------------------------------------- detectable format


def number_bullet_lists(r: Response, num_bullets: int) -> bool:
    """detectable_format:number_bullet_lists -- exactly N markdown bullets.

    Bullets are lines matching ``^\\s*\\*[^\\*].*$`` (``* item``, not ``**bold``)
    plus lines matching ``^\\s*-.*$`` (``- item``), counted separately.
    """
    bullets = sum(1 for m in _STAR_BULLET.findall(r.text) if m) + sum(1 for m in _DASH_BULLET.findall(r.text) if m)
    return bullets == num_bullets


def constrained_response(r: Response) -> bool:
    """detectable_format:constrained_response -- contains "My answer is yes.", "... no." or "... maybe."."""
    return any(option in r.text for option in _CONSTRAINED_OPTIONS)


def number_highlighted_sections(r: Response, num_highlights: int) -> bool:
    """detectable_format:number_highlighted_sections -- at least N highlights.

    A highlight is a non-blank ``*text*`` on one line; a non-blank ``**text**``
    counts again on its own (IFEval's current rule, which the published
    figures reproduce).
    """
    single = sum(1 for h in _HIGHLIGHT.findall(r.text) if h.strip("*").strip())
    double = sum(1 for h in _BOLD.findall(r.text) if h[2:-2].strip())
    return single + double >= num_highlights


def multiple_sections(r: Response, section_spliter: str, num_sections: int) -> bool:
    """detectable_format:multiple_sections -- at least N sections marked "<splitter> <number>".

    The text is split on ``\\s?<splitter>\\s?\\d+\\s?`` (case-sensitive); the
    number of sections is the number of pieces minus one.
    """
    pieces = re.split(rf"\s?{re.escape(section_spliter)}\s?\d+\s?", r.text)
    return len(pieces) - 1 >= num_sections


def json_format(r: Response) -> bool:
    """detectable_format:json_format -- the whole text parses as JSON once ``` fences are removed.

    Stripped, then the prefixes ```json, ```Json, ```JSON and ``` are removed
    in that order (each at most once), then one trailing ```, then stripped again.
    """
    value = r.text.strip()
    for fence in _JSON_FENCES:
        value = value.removeprefix(fence)
    value = value.removesuffix("```").strip()
    try:
        json.loads(value)
    except (ValueError, RecursionError):
        return False
    return True


def title(r: Response) -> bool:
    """detectable_format:title -- a non-blank title in double angular brackets, ``<<title>>``, on one line.

    IFEval's ``<<[^\\n]+>>`` takes, on each line, its first ``<<`` to its last ``>>``;
    the title is that text without its leading ``<`` and trailing ``>``, stripped.
    """
    for match in _TITLE_LINE.finditer(r.text):
        line = match.group()
        end = line.rfind(">>", 3)  # at least one character between "<<" and ">>"
        if end >= 0 and line[: end + 2].lstrip("<").rstrip(">").strip():
            return True
    return False


# ---------------------------------------------------------------- combination


def two_responses(r: Response) -> bool:
    """combination:two_responses -- exactly two different responses separated by ``******``.

    Blank pieces are allowed only before the first or after the last
    separator; the two responses must differ once stripped.
    """
    pieces = r.text.split("******")
    last = len(pieces) - 1
    responses = []
    for index, piece in enumerate(pieces):
        if piece.strip():
            responses.append(piece.strip())
        elif index not in (0, last):
            return False
    return len(responses) == 2 and responses[0] != responses[1]


def repeat_prompt(r: Response, prompt_to_repeat: str) -> bool:
    """combination:repeat_prompt -- the stripped text starts with the request, ignoring case."""
    return r.text.strip().lower().startswith(prompt_to_repeat.strip().lower())


# ---------------------------------------------------------------- start / end


def end_checker(r: Response, end_phrase: str) -> bool:
    """startend:end_checker -- the text, stripped of whitespace then of ``"``, ends with the phrase, any case."""
    return r.text.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def quotation(r: Response) -> bool:
    """startend:quotation -- the stripped text is wrapped in double quotes (and longer than one character)."""
    value = r.text.strip()
    return len(value) > 1 and value[0] == '"' and value[-1] == '"'


def no_comma(r: Response) -> bool:
    """punctuation:no_comma -- no ``,`` anywhere."""
    return "," not in r.text
