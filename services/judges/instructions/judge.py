"""The ``instructions`` judge: precise instruction following, IFEval's 25 types (docs/method.md §2).

A response passes iff it follows every instruction in
``metadata.instruction_id_list``. Two modes, as in IFEval:

* strict: each instruction is checked on the response as it is;
* loose: an instruction is followed if it holds on any non-blank one of 8
  variants: the response, without its first line, without its last line,
  without both (lines split on ``\\n``, the cut variants stripped), and those
  four with every ``*`` removed. Loose forgives a preamble ("Sure, here is..."),
  a closing remark and markdown emphasis.

A blank response follows no instruction, in either mode.

Each sample is judged in a ``WorkerPool`` process under a hard per-item limit
(``timeout_s``), never in the serving process: the checks are linear in the
response, but an 8 MiB response still costs seconds, and the serving process
must keep answering health checks and heartbeats meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from cgpo.services.common.schemas import Verdict
from cgpo.services.judges.base import Judge, Sample, errored, failed, passed
from cgpo.services.judges.instructions import catalog
from cgpo.services.judges.instructions.checks import Response
from cgpo.services.judges.instructions.language import load_profiles
from cgpo.services.judges.instructions.sentences import load_model
from cgpo.services.judges.pool import PoolError, WorkerPool


def loose_variants(response: str) -> list[str]:
    """IFEval's 8 loose-mode variants of ``response``, in IFEval's order.

    IFEval joins the lines of ``response.split("\\n")`` without the first, the last,
    or both; those are the text after the first newline, before the last, and between
    the two (cut here without building the list of lines).
    """
    first, last = response.find("\n"), response.rfind("\n")
    no_first = response[first + 1 :].strip() if first >= 0 else ""
    no_last = response[:last].strip() if last >= 0 else ""
    no_both = response[first + 1 : last].strip() if first < last else ""
    cut = [no_first, no_last, no_both]
    return [response, response.replace("*", ""), *cut, *(v.replace("*", "") for v in cut)]


def follows(response: str, instructions: Sequence[catalog.Bound], strict: bool) -> list[bool]:
    """For each instruction, whether ``response`` follows it in the given mode."""
    texts = [response] if strict else loose_variants(response)
    # Identical variants (no "*" to remove, a one-line response) are checked once, and each
    # variant's costly counts (language, sentences, ...) are computed at most once.
    views = [Response(t) for t in dict.fromkeys(t for t in texts if t.strip())]
    return [any(instruction(view) for view in views) for instruction in instructions]


def judge_one(sample: Sample) -> Verdict:
    """One verdict (the pool's function); malformed metadata or a crashing checker gives ``error``."""
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


def load_tables() -> None:
    """Load langdetect's profiles and the Punkt parameters (the pool's worker initializer)."""
    load_profiles()
    load_model()


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

    def __init__(self, *, timeout_s: float = 5.0, workers: int | None = None) -> None:
        """
        Args:
            timeout_s: hard limit per sample (all its instructions, every loose variant);
                the worker is killed past it and the sample answers ``error``.
            workers: worker processes; default: the CPUs this process may use.
        """
        self.timeout_s = timeout_s
        # Built now, started in setup(): pools built before the first start share the fork server,
        # which imports `warm` (the tables) once for every worker it forks.
        self._pool = WorkerPool(judge_one, workers=workers, timeout_s=timeout_s, initializer=load_tables,
                                preload=("cgpo.services.judges.instructions.warm",))
        self._started = False

    def setup(self) -> None:
        """Start the workers (each with langdetect's profiles and the Punkt model loaded)."""
        self._pool.setup()
        self._started = True

    def close(self) -> None:
        self._pool.close()
        self._started = False

    def judge(self, samples: Sequence[Sample], *, deadline: float | None = None) -> list[Verdict]:
        try:
            if not self._started:
                self.setup()
            results = self._pool.map(list(samples), deadline=deadline)
        except PoolError as exc:
            return [errored(f"instruction checks unavailable: {exc}")] * len(samples)
        return [r.value if r.ok else errored(r.reason("instruction checks")) for r in results]
