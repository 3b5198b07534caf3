"""Instruction ids, their checkers and arguments, and metadata validation.

A literal table: IFEval instruction id -> checker and the keyword arguments it
takes. Arguments arrive as IFEval's ``kwargs`` dicts; a ``None`` value means
"absent" (IFEval's data and its Hugging Face copy fill unused keys with null).
IFEval picks a random value for an absent or out-of-range argument when it
*generates* prompts; a judge must not guess, so here that is an error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cgpo.services.judges.instructions import checks
from cgpo.services.judges.instructions.language import load_profiles


class MetadataError(ValueError):
    """The sample's metadata cannot be judged (missing, unknown or ill-typed)."""


# ---------------------------------------------------------------- argument kinds
# Each takes the raw value and returns the value the checker gets, or raises
# ValueError saying what was expected.


def count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("expected an integer >= 0")
    return value


def position(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("expected an integer >= 1")
    return value


def relation(value: Any) -> str:
    if value not in checks.RELATIONS:
        raise ValueError(f"expected one of {list(checks.RELATIONS)}")
    return value


def text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-blank string")
    return value


def stripped(value: Any) -> str:
    """A non-blank string, stripped (IFEval strips starter, keyword, end phrase, marker, splitter)."""
    return text(value).strip()


def lowered(value: Any) -> str:
    return text(value).lower()


def words(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(w, str) and w for w in value):
        raise ValueError("expected a non-empty list of non-empty strings")
    return value


def letter(value: Any) -> str:
    if not isinstance(value, str) or len(value) != 1 or value.isspace():
        raise ValueError("expected a single character")
    return value.lower()


def language(value: Any) -> str:
    langs, _ = load_profiles()
    if value not in langs:
        raise ValueError(f"expected a language code langdetect knows: {sorted(langs)}")
    return value


# ---------------------------------------------------------------- the table


@dataclass(frozen=True)
class Instruction:
    """One IFEval instruction type: its checker and its keyword arguments (all required)."""

    check: Callable[..., bool]
    args: dict[str, Callable[[Any], Any]] = field(default_factory=dict)


INSTRUCTIONS: dict[str, Instruction] = {
    "keywords:existence": Instruction(checks.keyword_existence, {"keywords": words}),
    "keywords:frequency": Instruction(
        checks.keyword_frequency, {"keyword": stripped, "frequency": count, "relation": relation}
    ),
    "keywords:forbidden_words": Instruction(checks.forbidden_words, {"forbidden_words": words}),
    "keywords:letter_frequency": Instruction(
        checks.letter_frequency, {"letter": letter, "let_frequency": count, "let_relation": relation}
    ),
    "language:response_language": Instruction(checks.response_language, {"language": language}),
    "length_constraints:number_sentences": Instruction(
        checks.number_sentences, {"num_sentences": count, "relation": relation}
    ),
    "length_constraints:number_paragraphs": Instruction(checks.number_paragraphs, {"num_paragraphs": count}),
    "length_constraints:number_words": Instruction(checks.number_words, {"num_words": count, "relation": relation}),
    "length_constraints:nth_paragraph_first_word": Instruction(
        checks.nth_paragraph_first_word,
        {"num_paragraphs": position, "nth_paragraph": position, "first_word": lowered},
    ),
    "detectable_content:number_placeholders": Instruction(
        checks.number_placeholders, {"num_placeholders": count}
    ),
    "detectable_content:postscript": Instruction(checks.postscript, {"postscript_marker": stripped}),
    "detectable_format:number_bullet_lists": Instruction(checks.number_bullet_lists, {"num_bullets": count}),
    "detectable_format:constrained_response": Instruction(checks.constrained_response),
    "detectable_format:number_highlighted_sections": Instruction(
        checks.number_highlighted_sections, {"num_highlights": count}
    ),
    "detectable_format:multiple_sections": Instruction(
        checks.multiple_sections, {"section_spliter": stripped, "num_sections": count}
    ),
    "detectable_format:json_format": Instruction(checks.json_format),
    "detectable_format:title": Instruction(checks.title),
    "combination:two_responses": Instruction(checks.two_responses),
    "combination:repeat_prompt": Instruction(checks.repeat_prompt, {"prompt_to_repeat": text}),
    "startend:end_checker": Instruction(checks.end_checker, {"end_phrase": stripped}),
    "change_case:capital_word_frequency": Instruction(
        checks.capital_word_frequency, {"capital_frequency": count, "capital_relation": relation}
    ),
    "change_case:english_capital": Instruction(checks.english_capital),
    "change_case:english_lowercase": Instruction(checks.english_lowercase),
    "punctuation:no_comma": Instruction(checks.no_comma),
    "startend:quotation": Instruction(checks.quotation),
}


@dataclass(frozen=True)
class Bound:
    """An instruction with its validated arguments, ready to check a response."""

    id: str
    check: Callable[..., bool]
    args: dict[str, Any]

    def __call__(self, response: checks.Response) -> bool:
        return self.check(response, **self.args)


def parse(metadata: Mapping[str, Any]) -> tuple[list[Bound], bool]:
    """The sample's instructions with validated arguments, and whether the mode is strict.

    Raises ``MetadataError`` with a message naming the offending field.
    """
    ids = metadata.get("instruction_id_list")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise MetadataError("metadata.instruction_id_list must be a non-empty list of instruction ids")
    kwargs = metadata.get("kwargs")
    if kwargs is None:
        kwargs = [{}] * len(ids)
    if not isinstance(kwargs, list) or not all(k is None or isinstance(k, Mapping) for k in kwargs):
        raise MetadataError("metadata.kwargs must be a list of objects, one per instruction")
    if len(kwargs) != len(ids):
        raise MetadataError(f"metadata.kwargs has {len(kwargs)} entries for {len(ids)} instructions")
    strict = metadata.get("strict", True)
    if not isinstance(strict, bool):
        raise MetadataError("metadata.strict must be a boolean")
    return [bind(index, iid, k or {}) for index, (iid, k) in enumerate(zip(ids, kwargs))], strict


def bind(index: int, instruction_id: str, kwargs: Mapping[str, Any]) -> Bound:
    """Validate one instruction's arguments (``None`` values count as absent)."""
    spec = INSTRUCTIONS.get(instruction_id)
    where = f"instruction {index} ({instruction_id!r})"
    if spec is None:
        raise MetadataError(f"{where}: unknown instruction id; known ids: {sorted(INSTRUCTIONS)}")
    given = {k: v for k, v in kwargs.items() if v is not None}
    unexpected = sorted(set(given) - set(spec.args))
    if unexpected:
        raise MetadataError(f"{where}: unexpected kwargs {unexpected}; it takes {sorted(spec.args)}")
    args = {}
    for name, kind in spec.args.items():
        if name not in given:
            raise MetadataError(f"{where}: missing kwarg {name!r}")
        try:
            args[name] = kind(given[name])
        except ValueError as exc:
            raise MetadataError(f"{where}: kwarg {name!r}={given[name]!r}: {exc}") from None
    nth_word = instruction_id == "length_constraints:nth_paragraph_first_word"
    if nth_word and args["nth_paragraph"] > args["num_paragraphs"]:
        raise MetadataError(f"{where}: nth_paragraph must be <= num_paragraphs")
    return Bound(instruction_id, spec.check, args)
