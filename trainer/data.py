"""Prompt files, the resumable prompt sampler, and chat rendering (DESIGN: Trainer).

A task's prompts are a JSONL file, one object per line::

    {"prompt": "What is 2+2?", "metadata": {"answer": "4"}, "baseline": "4."}
    {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}

``prompt`` is a string or a list of chat messages; ``metadata`` (an object, optional) goes to the judges
(its key ``messages`` is reserved: a chat prompt's conversation is sent to the judges there);
``baseline`` (a string, optional) is the reference response ā of the calibrated reward (docs/method.md §3). Blank
lines are skipped; any other malformed line stops loading with ``file:line`` in the message, before
training starts.

A prompt's ``id`` is a hash of its content (prompt, metadata, baseline), not its line number, so ids
survive reordering or extending the file: caches keyed by it (the baseline sample drawn once from π_ref,
its reward) stay valid. Identical lines get ``-2``, ``-3``… suffixes in file order, so ids are unique
within a file. Ids are not unique across tasks; key by (task, id).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FIELDS = ("prompt", "metadata", "baseline")


class PromptFileError(ValueError):
    """A prompt file line is malformed; the message starts with ``file:line``."""


@dataclass(frozen=True)
class Prompt:
    id: str
    """Content hash (16 hex digits), ``-n`` suffixed for the n-th identical line."""
    prompt: str | tuple[tuple[str, str], ...]
    """The text, or the chat messages as (role, content) pairs."""
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)
    """Passed to the judges as is."""
    baseline: str | None = None
    """Reference response ā for the calibrated reward; None: one π_ref sample stands in (docs/method.md §3)."""
    line: int = field(default=0, compare=False)
    """1-based line in the source file (for messages)."""

    @property
    def is_chat(self) -> bool:
        return not isinstance(self.prompt, str)

    @property
    def text(self) -> str:
        """The prompt as one string, the judges' and reward models' ``prompt`` field: a chat prompt gives
        its last user message (the whole conversation travels next to it, trainer/scoring.py)."""
        if isinstance(self.prompt, str):
            return self.prompt
        users = [content for role, content in self.prompt if role == "user"]
        if not users:
            raise ValueError(f"prompt {self.id} has no user message")
        return users[-1]

    def messages(self) -> list[dict[str, str]]:
        """Chat messages for ``apply_chat_template``; a text prompt is one user turn."""
        if isinstance(self.prompt, str):
            return [{"role": "user", "content": self.prompt}]
        return [{"role": role, "content": content} for role, content in self.prompt]


# ---------------------------------------------------------------- loading


def load_prompts(path: str | Path) -> list[Prompt]:
    """Parse and validate a JSONL prompt file; raises ``PromptFileError`` naming ``file:line``."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptFileError(f"{path}: cannot read prompt file: {exc}") from exc
    prompts: list[Prompt] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        prompt, metadata, baseline = _parse_line(line, where)
        digest = _content_id(prompt, metadata, baseline)
        seen[digest] = seen.get(digest, 0) + 1
        uid = digest if seen[digest] == 1 else f"{digest}-{seen[digest]}"
        prompts.append(Prompt(uid, prompt, metadata, baseline, number))
    if not prompts:
        raise PromptFileError(f"{path}: no prompts (the file is empty)")
    return prompts


def _parse_line(line: str, where: str) -> tuple[str | tuple[tuple[str, str], ...], dict[str, Any], str | None]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise PromptFileError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from exc
    if not isinstance(record, dict):
        raise PromptFileError(f"{where}: each line must be a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - set(FIELDS))
    if unknown:
        raise PromptFileError(f"{where}: unknown field(s) {unknown}; known: {list(FIELDS)}")
    if "prompt" not in record:
        raise PromptFileError(f"{where}: missing 'prompt'")
    metadata = record.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise PromptFileError(f"{where}: 'metadata' must be an object, got {type(metadata).__name__}")
    if "messages" in metadata:
        raise PromptFileError(f"{where}: 'metadata.messages' is reserved (the judges receive a chat prompt's "
                              "conversation there); rename the key")
    baseline = record.get("baseline")
    if baseline is not None and (not isinstance(baseline, str) or not baseline.strip()):
        raise PromptFileError(f"{where}: 'baseline' must be a non-empty string or absent")
    return _parse_prompt(record["prompt"], where), metadata, baseline


def _parse_prompt(value: Any, where: str) -> str | tuple[tuple[str, str], ...]:
    if isinstance(value, str):
        if not value.strip():
            raise PromptFileError(f"{where}: 'prompt' is empty")
        return value
    if not isinstance(value, list):
        raise PromptFileError(f"{where}: 'prompt' must be a string or a list of messages, "
                              f"got {type(value).__name__}")
    if not value:
        raise PromptFileError(f"{where}: 'prompt' is an empty list of messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise PromptFileError(f"{where}: prompt message {i} must be an object with exactly "
                                  "'role' and 'content'")
        role, content = message["role"], message["content"]
        if not isinstance(role, str) or not role or not isinstance(content, str):
            raise PromptFileError(f"{where}: prompt message {i} needs a non-empty string 'role' "
                                  "and a string 'content'")
        messages.append((role, content))
    if not any(role == "user" for role, _ in messages):
        raise PromptFileError(f"{where}: the prompt messages have no 'user' turn")
    if messages[-1][0] == "assistant":  # the policy writes the next assistant turn
        raise PromptFileError(f"{where}: the last prompt message must not be from the assistant")
    return tuple(messages)


def _content_id(prompt: Any, metadata: dict[str, Any], baseline: str | None) -> str:
    canonical = json.dumps({"prompt": prompt, "metadata": metadata, "baseline": baseline},
                           sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- sampling


class PromptSampler:
    """Endless batches of prompts in a seeded shuffled order, epoch after epoch.

    Epochs are concatenated into one stream cut into batches of ``batch_size``, so every batch is full
    and every prompt is seen once per epoch (a batch may straddle two epochs). Epoch ``e``'s order
    depends only on (seed, e), so the state is just (seed, epoch, position in the epoch): a sampler
    restored with ``load_state_dict`` yields exactly the batches the saved one would have.
    """

    def __init__(self, prompts: Sequence[Prompt], batch_size: int, seed: int = 0) -> None:
        if not prompts:
            raise ValueError("PromptSampler needs at least one prompt")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.prompts = list(prompts)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._fingerprint = hashlib.sha256("\n".join(p.id for p in self.prompts).encode()).hexdigest()[:16]
        self._order = self._permutation(0)

    def _permutation(self, epoch: int) -> list[int]:
        order = list(range(len(self.prompts)))
        random.Random(f"cgpo-prompts:{self.seed}:{epoch}").shuffle(order)  # str seeds hash stably (sha512)
        return order

    def __iter__(self) -> Iterator[list[Prompt]]:
        return self

    def __next__(self) -> list[Prompt]:
        batch = []
        while len(batch) < self.batch_size:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation(self.epoch)
            batch.append(self.prompts[self._order[self.position]])
            self.position += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable position in the stream (the batch size is not part of it)."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position,
                "num_prompts": len(self.prompts), "fingerprint": self._fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["num_prompts"] != len(self.prompts) or state["fingerprint"] != self._fingerprint:
            raise ValueError("sampler state was saved over a different prompt list "
                             f"({state['num_prompts']} prompts, fingerprint {state['fingerprint']}; "
                             f"now {len(self.prompts)}, {self._fingerprint})")
        if not 0 <= state["position"] <= len(self.prompts) or state["epoch"] < 0:
            raise ValueError(f"sampler state out of range: epoch {state['epoch']}, position {state['position']}")
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._order = self._permutation(self.epoch)


# ---------------------------------------------------------------- rendering


def render(tokenizer: Any, prompt: Prompt) -> list[int]:
    """Token ids the policy continues from.

    With a chat template: the messages (a text prompt as one user turn) rendered with
    ``add_generation_prompt=True`` and encoded without special tokens, since the template writes BOS
    itself (as ``apply_chat_template(tokenize=True)`` and vLLM do). Without one: the text as is, with
    whatever the tokenizer adds (its BOS). A chat prompt without a template is an error.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(prompt.messages(), tokenize=False, add_generation_prompt=True)
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    elif isinstance(prompt.prompt, str):
        ids = list(tokenizer(prompt.prompt, add_special_tokens=True)["input_ids"])
    else:
        raise ValueError(f"prompt {prompt.id} (line {prompt.line}) is a list of chat messages but the "
                         "tokenizer has no chat template")
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and len(ids) >= 2 and ids[0] == ids[1] == bos:  # template BOS + a BOS in the text
        ids = ids[1:]
    return ids
