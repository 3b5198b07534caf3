"""The ``instructions`` judge: precise instruction following, IFEval's 25 types (SPEC §2).

A response passes iff it follows every instruction in
``metadata.instruction_id_list``. Two modes, as in IFEval:

* strict: each instruction is checked on the response as it is;
* loose: an instruction is followed if it holds on any non-blank one of 8
  variants: the response, without its first line, without its last line,
  without both (lines split on ``\\n``, the cut variants stripped), and those
  four with every ``*`` removed. Loose forgives a preamble ("Sure, here is..."),
  a closing remark and markdown emphasis.

A blank response follows no instruction, in either mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from services.common.schemas import Verdict
from services.judges.base import Judge, Sample, errored, failed, passed
from services.judges.instructions import catalog
from services.judges.instructions.checks import Response
from services.judges.instructions.language import load_profiles
from services.judges.instructions.sentences import load_model


def loose_variants(response: str) -> list[str]:
    """IFEval's 8 loose-mode variants of ``response``, in IFEval's order."""
    lines = response.split("\n")
    no_first = "\n".join(lines[1:]).strip()
    no_last = "\n".join(lines[:-1]).strip()
    no_both = "\n".join(lines[1:-1]).strip()
    cut = [no_first, no_last, no_both]
    return [response, response.replace("*", ""), *cut, *(v.replace("*", "") for v in cut)]


def follows(response: str, instructions: Sequence[catalog.Bound], strict: bool) -> list[bool]:
    """For each instruction, whether ``response`` follows it in the given mode."""
    texts = [response] if strict else loose_variants(response)
    # Identical variants (no "*" to remove, a one-line response) are checked once, and each
    # variant's costly counts (language, sentences, ...) are computed at most once.
    views = [Response(t) for t in dict.fromkeys(t for t in texts if t.strip())]
    return [any(instruction(view) for view in views) for instruction in instructions]


class InstructionsJudge(Judge):
    """IFEval's verifiable instructions, strict or loose, with IFEval's exact semantics."""

    name: ClassVar[str] = "instructions"
    description: ClassVar[str] = (
        "Precise instruction following: the response follows every verifiable formatting instruction "
        "(IFEval's 25 types: word/sentence/paragraph counts, case, language, JSON, bullets, highlights, "
        "sections, title, postscript, quotation, keywords, letter frequency, no commas, ...), "
        "checked with IFEval's definitions in strict or loose mode."
    )
    metadata_fields: ClassVar[dict[str, str]] = {
        "instruction_id_list": "Required. IFEval instruction ids, e.g. [\"punctuation:no_comma\", "
        "\"length_constraints:number_words\"]; the response must follow all of them.",
        "kwargs": "List of objects, one per instruction, in order: IFEval's keyword arguments "
        "(e.g. {\"num_words\": 300, \"relation\": \"at least\"}; combination:repeat_prompt takes "
        "\"prompt_to_repeat\"). Null values count as absent; every argument an instruction takes is "
        "required. May be omitted when no instruction takes arguments.",
        "strict": "Optional boolean, default true. false = IFEval's loose mode (an instruction also "
        "passes if it holds once the first and/or last line, or the asterisks, are removed).",
    }

    def setup(self) -> None:
        """Load langdetect's profiles and the Punkt model before the first batch."""
        load_profiles()
        load_model()

    def judge(self, samples: Sequence[Sample]) -> list[Verdict]:
        return [self.judge_one(sample) for sample in samples]

    def judge_one(self, sample: Sample) -> Verdict:
        """One verdict; malformed metadata or a crashing checker gives ``error``."""
        try:
            instructions, strict = catalog.parse(sample.metadata)
        except catalog.MetadataError as exc:
            return errored(str(exc))
        try:
            followed = follows(sample.response, instructions, strict)
        except Exception as exc:  # noqa: BLE001 - a checker bug is this sample's error, not the batch's
            return errored(f"checker failed: {type(exc).__name__}: {exc}")
        ids = [instruction.id for instruction in instructions]
        detail = {"followed": followed, "instruction_ids": ids, "mode": "strict" if strict else "loose"}
        if all(followed):
            return passed(**detail)
        return failed(**detail, failed_ids=[i for i, ok in zip(ids, followed) if not ok])
