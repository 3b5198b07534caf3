"""LLM judges: a template, a backend, and a comparison of two next-token probabilities (docs/method.md §2).

The judge renders each sample into the template, wraps it in the model's chat
template, and asks the backend for log P(positive) and log P(negative) of the
next token. ``fail`` when P(negative) > P(positive), else ``pass``; a sample
with missing metadata, or a prompt longer than the model reads, gets ``error``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from cgpo.services.common.schemas import Verdict
from cgpo.services.judges.base import Judge, Sample, errored, failed, passed
from cgpo.services.judges.llm.backends import Backend, HFBackend, VLLMBackend
from cgpo.services.judges.llm.templates import (
    TEMPLATES,
    JudgeTemplate,
    MissingMetadataError,
    encode,
    model_text,
)


class LabelTokenError(ValueError):
    """A template's label is not one token of the model's tokenizer (or both labels are the same token)."""


class LLMJudge(Judge):
    """Judge named after its template; several judges may share one backend (one model in memory)."""

    def __init__(self, template: JudgeTemplate, backend: Backend, *, use_chat_template: bool = True) -> None:
        """``use_chat_template=False`` feeds the filled template as bare text (BOS added by the tokenizer),
        e.g. for a classifier whose own chat template already builds a full judge prompt."""
        self.template = template
        self.backend = backend
        self.use_chat_template = use_chat_template
        self.name = template.name
        self.description = template.description
        self.metadata_fields = dict(template.metadata_fields)
        self._label_ids: tuple[int, int] | None = None

    def setup(self) -> None:
        """Load the backend (shared, so only the first judge pays) and resolve the label tokens."""
        tokenizer = self.backend.tokenizer
        context = model_text(tokenizer, self.template.probe(), self.use_chat_template)
        pos = label_token_id(tokenizer, self.template.positive, context, self.use_chat_template)
        neg = label_token_id(tokenizer, self.template.negative, context, self.use_chat_template)
        if pos == neg:
            raise LabelTokenError(
                f"template {self.name!r}: labels {self.template.positive!r} and {self.template.negative!r} "
                f"are the same token {pos}"
            )
        self._label_ids = (pos, neg)

    def close(self) -> None:
        self.backend.close()
        self._label_ids = None

    @property
    def label_token_ids(self) -> tuple[int, int]:
        """(positive, negative) token ids in the model's vocabulary."""
        if self._label_ids is None:
            self.setup()
        assert self._label_ids is not None
        return self._label_ids

    def encode(self, sample: Sample) -> list[int]:
        """The token ids the model reads for this sample. Raises MissingMetadataError."""
        text = self.template.render(sample.prompt, sample.response, sample.metadata)
        tokenizer = self.backend.tokenizer
        return encode(tokenizer, model_text(tokenizer, text, self.use_chat_template), self.use_chat_template)

    def judge(self, samples: Sequence[Sample], *, deadline: float | None = None) -> list[Verdict]:
        """One verdict per sample. ``deadline`` is not used: the work is a few forward passes of
        prompts no longer than the model reads."""
        labels = self.label_token_ids
        limit = self.backend.max_prompt_tokens
        verdicts: list[Verdict | None] = [None] * len(samples)
        prompts: list[list[int]] = []
        positions: list[int] = []
        for i, sample in enumerate(samples):
            try:
                ids = self.encode(sample)
            except MissingMetadataError as e:
                verdicts[i] = errored(str(e), template=self.name)
                continue
            if len(ids) > limit:
                reason = f"judge prompt is {len(ids)} tokens, over the model's {limit}"
                verdicts[i] = errored(reason, template=self.name)
                continue
            prompts.append(ids)
            positions.append(i)
        logprobs = self.backend.next_token_logprobs(prompts, [labels] * len(prompts))
        for i, (logp_pos, logp_neg) in zip(positions, logprobs, strict=True):
            verdicts[i] = self._verdict(logp_pos, logp_neg)
        assert all(v is not None for v in verdicts)
        return verdicts  # type: ignore[return-value]

    def _verdict(self, logp_pos: float, logp_neg: float) -> Verdict:
        # Compare in log space: exact even when both probabilities underflow to 0.
        detail = {"p_positive": math.exp(logp_pos), "p_negative": math.exp(logp_neg), "template": self.name}
        return failed(**detail) if logp_neg > logp_pos else passed(**detail)


def label_token_id(tokenizer: Any, label: str, context: str, use_chat_template: bool = True) -> int:
    """The id of the single token ``label`` that the model would emit right after ``context``.

    ``context`` is a rendered judge prompt: every prompt of the template ends
    the same way (usually with the chat template's assistant header). Leading
    spaces: a label written with one (``" safe"``) is taken literally. Otherwise
    the label is appended to the context the way a model would continue it —
    with a space after a non-space character (``[/INST] safe``: ``Ġsafe`` or
    ``▁safe``), directly after whitespace (``<|assistant|>\nsafe``) — and if that
    adds exactly one token, that token is the label. Failing that, the bare
    label, then the label with one leading space, when either is a single
    token. Anything else is a LabelTokenError.
    """
    explicit = label[:1].isspace()
    if not explicit:
        before = encode(tokenizer, context, use_chat_template)
        joins = [label] if context[-1:].isspace() else [" " + label, label]
        for join in joins:
            after = encode(tokenizer, context + join, use_chat_template)
            if len(after) == len(before) + 1 and after[: len(before)] == before:
                return after[-1]
    tried = {}
    for variant in [label] if explicit else [label, " " + label]:
        ids = list(tokenizer(variant, add_special_tokens=False)["input_ids"])
        if len(ids) == 1:
            return ids[0]
        tried[variant] = ids
    raise LabelTokenError(
        f"label {label!r} is not a single token of tokenizer {getattr(tokenizer, 'name_or_path', '')!r} "
        f"(encodings tried: {tried}); pick a label word the model's vocabulary has as one token"
    )


def build_llm_judges(
    model: str,
    backend: Literal["hf", "vllm"] = "hf",
    *,
    names: Sequence[str] | None = None,
    templates: Sequence[JudgeTemplate] | None = None,
    use_chat_template: bool = True,
    **opts: Any,
) -> list[LLMJudge]:
    """LLM judges sharing one model: the built-in ``false_refusal``, ``factuality``, ``safety``
    (or those of them in ``names``), or the given custom ``templates``.

    ``opts`` go to the backend: ``HFBackend(model, **opts)`` or ``VLLMBackend(model, **opts)``
    (``batch_size`` works for both). Nothing is loaded until the first judge's ``setup()``.
    """
    backends = {"hf": HFBackend, "vllm": VLLMBackend}
    if backend not in backends:
        raise ValueError(f"unknown LLM judge backend {backend!r}; expected one of {sorted(backends)}")
    if names is not None and templates is not None:
        raise ValueError("pass either names (built-in templates) or templates, not both")
    if templates is None:
        if unknown := [n for n in names or () if n not in TEMPLATES]:
            raise ValueError(f"unknown LLM judges {unknown}; built-in: {list(TEMPLATES)}")
        templates = [TEMPLATES[n] for n in names] if names is not None else list(TEMPLATES.values())
    shared = backends[backend](model, **opts)
    return [LLMJudge(t, shared, use_chat_template=use_chat_template) for t in templates]
