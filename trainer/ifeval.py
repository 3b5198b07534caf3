"""IFEval's four accuracies of a set of responses, from the ``instructions`` judge (Zhou et al. 2023).

* prompt-level: the share of prompts whose every instruction is followed;
* instruction-level: the share of all instructions followed;

each in the strict mode (the response as written) and the loose mode (the response also counts as
following an instruction when one of its IFEval variants does: first line, last line or both removed,
``*`` stripped). The judge returns which instructions were followed (``detail.followed``); a response
it cannot judge (an ``error`` verdict) counts as following none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cgpo.trainer.data import Prompt
from cgpo.trainer.scoring import judge_item

JUDGE = "instructions"
METRICS = ("prompt_strict", "instruction_strict", "prompt_loose", "instruction_loose")


async def accuracies(client: Any, prompts: Sequence[Prompt], responses: Sequence[str]) -> dict[str, float]:
    """``METRICS`` -> accuracy in [0, 1] for one response per prompt (the prompts' metadata holds their
    ``instruction_id_list`` and ``kwargs``)."""
    return from_followed(await followed(client, prompts, responses))


async def followed(client: Any, prompts: Sequence[Prompt], responses: Sequence[str]) -> dict[str, list[list[bool]]]:
    """Per mode (``strict``, ``loose``), per prompt, whether each of its instructions was followed: what the
    accuracies are computed from, so that parts judged apart (one per rank) can be put together."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    out: dict[str, list[list[bool]]] = {}
    for mode in ("strict", "loose"):
        items = [judge_item(p, r, [JUDGE], {**p.metadata, "strict": mode == "strict"})
                 for p, r in zip(prompts, responses)]
        results = await client.judge(items) if items else []
        out[mode] = [followed_flags(result.verdicts[JUDGE], p.metadata)
                     for result, p in zip(results, prompts, strict=True)]
    return out


def from_followed(flags: dict[str, list[list[bool]]]) -> dict[str, float]:
    """``METRICS`` from `followed`'s flags."""
    out: dict[str, float] = {}
    for mode in ("strict", "loose"):
        out[f"prompt_{mode}"] = _share(all(f) for f in flags[mode])
        out[f"instruction_{mode}"] = _share(x for f in flags[mode] for x in f)
    return out


def followed_flags(verdict: Any, metadata: dict[str, Any]) -> list[bool]:
    """Per instruction of ``metadata``, whether the ``instructions`` verdict says it was followed (none
    when the judge answered ``error``)."""
    if verdict.verdict == "error":
        return [False] * len(metadata.get("instruction_id_list") or [None])
    return [bool(x) for x in verdict.detail["followed"]]


def _share(flags: Any) -> float:
    flags = list(flags)
    return sum(flags) / len(flags) if flags else 0.0
