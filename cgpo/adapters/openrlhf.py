"""Judges as OpenRLHF's reward function file: ``--remote_rm_url <cgpo's install>/cgpo/adapters/openrlhf.py``.

OpenRLHF imports the file and calls ``reward_func(queries, prompts, labels)`` for a batch: ``queries`` are
prompt and response as it decoded them (special tokens included), ``prompts`` the formatted prompts,
``labels`` the dataset's ``--label_key`` column. The response is the query after its prompt, with padding
and end-of-sequence tokens at its end removed (``CGPO_ADAPTER_END_TOKENS``, comma-separated; default the
common ones). A label carries the judges' metadata: an object, or its JSON text, either the metadata itself or
``{"judges": [...], "metadata": {...}}``; a plain string or number is the ``answer`` (GSM8K-style labels).
Judges are the label's, else ``CGPO_ADAPTER_JUDGES`` (comma-separated), run by
``CGPO_ADAPTER_JUDGES_URL`` or embedded in OpenRLHF's process; the batch goes in one request per set of
judges.

Returns what OpenRLHF expects of a reward function: ``rewards`` (1.0 feasible, 0.0 not; also 0.0 for a
row whose label lacks the metadata its judges require, which is not sent), ``scores`` (the same, used
for filtering) and ``extra_logs`` (per judge the pass share, the error share, and the applicable share),
as tensors. For the reward-model service itself, point ``--remote_rm_url`` at its ``/get_reward`` instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from cgpo.adapters import default_judges, judge_rows
from cgpo.services.common.settings import AdapterSettings

END_TOKENS = ("</s>", "<|im_end|>", "<|eot_id|>", "<|endoftext|>", "<|end_of_text|>", "<pad>", "<|pad|>")
"""What a response's end may carry when decoded with special tokens, unless ``CGPO_ADAPTER_END_TOKENS`` says."""


def reward_func(queries: Sequence[str], prompts: Sequence[str], labels: Sequence[Any] | None = None,
                **_: Any) -> dict[str, Any]:
    import torch

    labels = list(labels) if labels is not None else [None] * len(queries)
    parsed = [_label(label) for label in labels]
    responses = [_response(q, p) for q, p in zip(queries, prompts, strict=True)]
    results = judge_rows([judges for judges, _ in parsed], list(prompts), responses, [meta for _, meta in parsed])
    rewards = [1.0 if result is not None and result.feasible else 0.0 for result in results]
    logs: dict[str, list[float]] = {}
    for (judges, _), result in zip(parsed, results, strict=True):
        logs.setdefault("applicable", []).append(float(result is not None))
        for judge in judges:
            verdict = result.verdicts[judge].verdict if result is not None else None
            logs.setdefault(f"{judge}_pass", []).append(float(verdict == "pass"))
            logs.setdefault(f"{judge}_error", []).append(float(verdict == "error"))
    tensor = torch.tensor(rewards, dtype=torch.float32)
    return {"rewards": tensor, "scores": tensor.clone(),
            "extra_logs": {k: torch.tensor(sum(v) / len(v)) for k, v in logs.items()}}


def _label(label: Any) -> tuple[tuple[str, ...], dict[str, Any]]:
    if isinstance(label, str):
        try:
            label = json.loads(label)
        except json.JSONDecodeError:
            pass  # a plain answer
    judges: Any = None
    if isinstance(label, dict):
        judges = label.get("judges")
        metadata = dict(label.get("metadata", {})) if "judges" in label or "metadata" in label else dict(label)
    elif label is None:
        metadata = {}
    else:
        metadata = {"answer": label if isinstance(label, str | int | float) else str(label)}
    judges = judges or default_judges()
    return ((judges,) if isinstance(judges, str) else tuple(j.strip() for j in judges)), metadata


def _response(query: str, prompt: str) -> str:
    response = query[len(prompt):] if query.startswith(prompt) else query
    ends = AdapterSettings.from_env().end_tokens or END_TOKENS
    stripped = True
    while stripped:
        stripped = False
        response = response.rstrip()
        for token in ends:
            if response.endswith(token):
                response, stripped = response[: -len(token)], True
    return response
