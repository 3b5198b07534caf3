"""Which judges exist, what they need, and how to build them from a `JudgeConfig`.

A literal table: name -> (class or template, factory). Describing a judge
imports no model code, so a queue-mode gateway can list and validate judges
without loading anything.
"""

from __future__ import annotations

import importlib

from cgpo.services.common.schemas import REQUIRED_METADATA, JudgeInfo
from cgpo.services.judges.base import Judge
from cgpo.services.judges.config import LLM_JUDGES, JudgeConfig


# name -> (module, class); imported only when that judge is described or built.
RULE_CLASSES = {
    "math": ("cgpo.services.judges.math", "MathJudge"),
    "code": ("cgpo.services.judges.code", "CodeJudge"),
    "instructions": ("cgpo.services.judges.instructions", "InstructionsJudge"),
    "refusal": ("cgpo.services.judges.refusal", "RefusalJudge"),
}


def _rule_class(name: str) -> type[Judge]:
    module, cls = RULE_CLASSES[name]
    return getattr(importlib.import_module(module), cls)


def describe(config: JudgeConfig) -> list[JudgeInfo]:
    """Name, description and metadata fields of every judge ``config`` serves."""
    infos = []
    for name in config.names:
        if name in RULE_CLASSES:
            cls = _rule_class(name)
            infos.append(JudgeInfo(name=name, description=cls.description, metadata=dict(cls.metadata_fields),
                                   required=_required(name)))
        else:
            from cgpo.services.judges.llm.templates import TEMPLATES

            template = TEMPLATES[name]
            infos.append(JudgeInfo(name=name, description=template.description,
                                   metadata=dict(template.metadata_fields), required=_required(name)))
    return infos


def _required(name: str) -> list[list[str]]:
    return [list(alternatives) for alternatives in REQUIRED_METADATA.get(name, ())]


def build(config: JudgeConfig) -> dict[str, Judge]:
    """Instantiate the judges ``config`` serves (``setup`` is left to the caller)."""
    factories = {
        "math": lambda: _rule_class("math")(timeout_s=config.math_timeout_s, rule_timeout_s=config.rule_timeout_s,
                                            workers=config.process_count),
        "code": lambda: _rule_class("code")(timeout_s=config.code_timeout_s, memory_mb=config.code_memory_mb,
                                            workers=config.process_count, sandbox=config.code_sandbox),
        "instructions": lambda: _rule_class("instructions")(timeout_s=config.rule_timeout_s,
                                                            workers=config.process_count),
        "refusal": lambda: _rule_class("refusal")(default_mode=config.refusal_mode),
    }
    judges: dict[str, Judge] = {name: factories[name]() for name in config.names if name in factories}
    llm_names = [n for n in config.names if n in LLM_JUDGES]
    if llm_names:
        from cgpo.services.judges.llm import build_llm_judges

        for judge in build_llm_judges(config.llm_model, config.llm_backend, names=llm_names,
                                      batch_size=config.llm_batch_size):
            judges[judge.name] = judge
    return judges
