"""LLM judges (false refusal, factuality, safety): compare two next-token probabilities (docs/method.md §2).

Importing this package loads no torch, transformers or vllm: backends import them when they load.
"""

from cgpo.services.judges.llm.backends import Backend, HFBackend, VLLMBackend
from cgpo.services.judges.llm.judge import LabelTokenError, LLMJudge, build_llm_judges
from cgpo.services.judges.llm.templates import TEMPLATES, JudgeTemplate, MissingMetadataError

__all__ = [
    "TEMPLATES",
    "Backend",
    "HFBackend",
    "JudgeTemplate",
    "LLMJudge",
    "LabelTokenError",
    "MissingMetadataError",
    "VLLMBackend",
    "build_llm_judges",
]
