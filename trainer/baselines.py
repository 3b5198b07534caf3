"""Each prompt's baseline response ā (SPEC §3): the dataset's, or one π_ref sample drawn once and cached.

Baselines and whether each passes its task's judges are computed before training and stored in
``{output_dir}/baselines/{task}.json`` keyed by prompt id, so a resumed run (or a second run in the
same directory) reuses them instead of sampling again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainer.config import TaskConfig
from trainer.data import Prompt, render
from trainer.rollout import HFRollout
from trainer.scoring import Services


def load_baselines(path: Path) -> dict[str, dict[str, Any]]:
    return json.loads(path.read_text()) if path.exists() else {}


def prepare_baselines(task: TaskConfig, prompts: list[Prompt], tokenizer: Any, engine: HFRollout,
                      services: Services, run: Callable[[Any], Any], out_dir: Path,
                      seed: int) -> dict[str, dict[str, Any]]:
    """prompt id -> {"text", "ids", "feasible"} for every prompt; samples and judges only what is missing."""
    path = out_dir / "baselines" / f"{task.name}.json"
    cache = load_baselines(path)
    missing = [p for p in prompts if p.id not in cache]
    if not missing:
        return cache
    texts: dict[str, str] = {p.id: p.baseline for p in missing if p.baseline is not None}
    to_sample = [p for p in missing if p.baseline is None]
    if to_sample:  # one sample from π_ref, before training, kept fixed
        rollouts = engine.generate([render(tokenizer, p) for p in to_sample], k=1, seed=seed)
        texts.update({p.id: t for p, t in zip(to_sample, rollouts.text, strict=True)})
    feasible = run(_judge(task, [(p, texts[p.id]) for p in missing], services))
    eos = tokenizer.eos_token_id
    for p, ok in zip(missing, feasible, strict=True):
        ids = list(tokenizer(texts[p.id], add_special_tokens=False)["input_ids"]) + ([eos] if eos is not None else [])
        cache[p.id] = {"text": texts[p.id], "ids": ids, "feasible": ok}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cache))
    return cache


async def _judge(task: TaskConfig, pairs: list[tuple[Prompt, str]], services: Services) -> list[bool]:
    if not task.judges:
        return [True] * len(pairs)
    items = [{"prompt": p.text, "response": t, "judges": task.judges, "metadata": p.metadata} for p, t in pairs]
    results = await services.judges(task).judge(items)
    return [r.feasible for r in results]
