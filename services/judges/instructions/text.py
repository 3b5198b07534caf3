"""Word counting as IFEval defines it.

Two different notions of "word" appear in IFEval:

* ``count_words`` (``length_constraints:number_words``) tokenizes with
  ``nltk.tokenize.RegexpTokenizer(r"\\w+")``: a word is a maximal run of
  Unicode word characters, so "don't" is 2 words and "state-of-the-art" is 4.
* ``change_case:capital_word_frequency`` counts the tokens of
  ``nltk.word_tokenize(text)`` for which ``str.isupper()`` holds: Punkt
  sentences, each split by NLTK's improved Penn Treebank rules. Hyphenated
  words stay whole ("AI-POWERED" is one capital word), clitics split off
  ("DON'T" is "DO" + "N'T", two capital words; "CEO's" is "CEO" + "'s", one).
"""

from __future__ import annotations

import functools
import re

from cgpo.services.judges.instructions.sentences import split_sentences

_WORD = re.compile(r"\w+")


def count_words(text: str) -> int:
    """Number of ``\\w+`` runs in ``text`` (IFEval's ``count_words``)."""
    return sum(1 for _ in _WORD.finditer(text))


def count_capital_words(text: str) -> int:
    """Number of ``nltk.word_tokenize`` tokens of ``text`` that are all upper case."""
    return sum(_capital_words(sentence) for sentence in split_sentences(text))


def _capital_words(sentence: str) -> int:
    """Capital tokens of one sentence; short sentences are memoised (degenerate text repeats them)."""
    return _capitals_cached(sentence) if len(sentence) <= _CACHED_CHARS else _capitals(sentence)


def _capitals(sentence: str) -> int:
    return sum(token.isupper() for token in treebank_tokens(sentence))


_CACHED_CHARS = 256
_capitals_cached = functools.lru_cache(maxsize=1 << 12)(_capitals)


# NLTK 3.8.1's ``NLTKWordTokenizer`` (an improved Penn Treebank tokenizer):
# regex rewrites applied in this order to one sentence, then a whitespace split.
# The two final-period rules are NLTK's with possessive quantifiers (*+): NLTK's
# ``([^\.])(\.)(closers*)\s*$`` splits a run of spaces between ``closers*`` (the
# class holds " ") and ``\s*`` in every way before failing ("a." + 50,000 spaces
# + "b": quadratic). Both patterns succeed only with the closers and the spaces
# each taken whole, so giving up nothing changes no match (a test checks it).
_STARTING_QUOTES = (
    (re.compile("([«“‘„]|[`]+)"), r" \1 "),
    (re.compile(r'^"'), r"``"),
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r"([ \(\[{<])(\"|\'{2})"), r"\1 `` "),
    (re.compile(r"(?i)(\')(?!re|ve|ll|m|t|s|d|n)(\w)\b"), r"\1 \2"),
)
_PUNCTUATION = (
    (re.compile(r"([^\.])(\.)([\]\)}>\"\'»”’ ]*+)\s*+$"), r"\1 \2 \3 "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.{2,}"), r" \g<0> "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile(r"([^\.])(\.)([\]\)}>\"\']*+)\s*+$"), r"\1 \2\3 "),
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
    (re.compile(r"[*]"), r" \g<0> "),
    (re.compile(r"[\]\[\(\)\{\}\<\>]"), r" \g<0> "),  # brackets
    (re.compile(r"--"), r" -- "),  # double dashes
)
_ENDING_QUOTES = (
    (re.compile("([»”’])"), r" \1 "),
    (re.compile(r"''"), " '' "),
    (re.compile(r'"'), " '' "),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
)
_CONTRACTIONS = tuple(
    (re.compile(pattern), r" \1 \2 ")
    for pattern in (
        r"(?i)\b(can)(?#X)(not)\b",
        r"(?i)\b(d)(?#X)('ye)\b",
        r"(?i)\b(gim)(?#X)(me)\b",
        r"(?i)\b(gon)(?#X)(na)\b",
        r"(?i)\b(got)(?#X)(ta)\b",
        r"(?i)\b(lem)(?#X)(me)\b",
        r"(?i)\b(more)(?#X)('n)\b",
        r"(?i)\b(wan)(?#X)(na)(?=\s)",
        r"(?i) ('t)(?#X)(is)\b",
        r"(?i) ('t)(?#X)(was)\b",
    )
)


def treebank_tokens(sentence: str) -> list[str]:
    """``NLTKWordTokenizer().tokenize(sentence)``: split punctuation, quotes and clitics."""
    for pattern, replacement in _STARTING_QUOTES + _PUNCTUATION:
        sentence = pattern.sub(replacement, sentence)
    sentence = " " + sentence + " "
    for pattern, replacement in _ENDING_QUOTES + _CONTRACTIONS:
        sentence = pattern.sub(replacement, sentence)
    return sentence.split()
