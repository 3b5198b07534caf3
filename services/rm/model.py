"""A Bradley–Terry reward model: encode (prompt, response) the same way every time, score in batches.

Encoding: the tokenizer's chat template with the prompt as the user turn — or, when the item
carries them, every turn of the conversation — and the response as the assistant turn (plain
``prompt\\n\\nresponse`` when the tokenizer has no template). Truncation keeps the response whole
and drops tokens from the *start* of the prompt part; a response longer than the whole budget is cut
at its end as a last resort. Either way the item is flagged ``truncated``.

Scoring reads the head's output at the last real token of each sequence,
whatever the padding side, with position ids counted over real tokens only, so
a score never depends on what it was batched with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Encoded:
    ids: tuple[int, ...]
    truncated: bool


class RewardModel:
    """One named reward model, loaded from a local path or model id."""

    def __init__(self, name: str, path: str, *, max_length: int = 2048, device: str | None = None,
                 dtype: str | None = None, max_batch_tokens: int = 16384, padding_side: str = "left") -> None:
        if padding_side not in ("left", "right"):
            raise ValueError("padding_side must be 'left' or 'right'")
        self.name, self.path = name, path
        self.max_length = max_length
        self.max_batch_tokens = max_batch_tokens
        self.padding_side = padding_side
        self._device_name, self._dtype_name = device, dtype
        self.model: Any = None
        self.tokenizer: Any = None
        self.forward_passes = 0  # batches run, for tests and metrics
        self.sequences_scored = 0
        self.fingerprint = ""  # the weights' identity (``weights_fingerprint``), known once loaded

    # ---------------------------------------------------------------- loading

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def load(self) -> None:
        if self.loaded:
            return
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        device = self._device_name or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
            self._dtype_name or ("bfloat16" if device.startswith("cuda") else "float32"))
        if dtype is None:
            raise ValueError(f"unknown dtype {self._dtype_name!r}; use float32, bfloat16 or float16")
        from cgpo.modelfiles import resolve_model

        path = resolve_model(self.path)  # a GGUF file is converted once and cached
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
        if model.config.num_labels != 1:
            raise ValueError(f"reward model {self.path} has {model.config.num_labels} outputs; a Bradley-Terry "
                             "reward model has one")
        self.model = model.to(device).eval()
        self.device, self.dtype = device, dtype
        self.fingerprint = weights_fingerprint(path, model, self.max_length, str(dtype))
        self.pad_id = next(i for i in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id, 0) if i is not None)

    def describe(self) -> dict[str, Any]:
        dtype = str(self.dtype).removeprefix("torch.") if self.loaded else (self._dtype_name or "auto")
        return {"name": self.name, "path": self.path, "max_length": self.max_length, "dtype": dtype,
                "device": getattr(self, "device", self._device_name or "auto")}

    # ---------------------------------------------------------------- encoding

    def encode(self, prompt: str, response: str, messages: Sequence[Any] | None = None) -> Encoded:
        """Token ids of (prompt as user turn, response as assistant turn), truncated to ``max_length``.

        ``messages`` (chat messages, dicts or models with ``role`` and ``content``): the whole
        conversation before the response, encoded with the chat template instead of ``prompt`` alone."""
        tok = self.tokenizer
        turns = ([{"role": m["role"], "content": m["content"]} if isinstance(m, dict)
                  else {"role": m.role, "content": m.content} for m in messages] if messages
                 else [{"role": "user", "content": prompt}])
        if getattr(tok, "chat_template", None):
            prefix = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            full = tok.apply_chat_template([*turns, {"role": "assistant", "content": response}], tokenize=False)
            if not full.startswith(prefix):  # templates that rewrite earlier turns: split at the response
                prefix = full[: max(0, full.rfind(response))] if response else full
            special = False
        else:
            context = "\n\n".join(t["content"] for t in turns)
            prefix, full, special = context + "\n\n", context + "\n\n" + response, True
        prefix_ids = tok(prefix, add_special_tokens=special).input_ids
        full_ids = tok(full, add_special_tokens=special).input_ids
        return self._truncate(full_ids, self._common_prefix(prefix_ids, full_ids))

    def encode_text(self, text: str, prompt: str | None = None) -> Encoded:
        """Ids of an already formatted text (OpenRLHF's protocol), as `encode` gives them for the same
        conversation; ``prompt`` marks the part that may be cut.

        A trainer sends what it decoded with its special tokens: padding around the text is dropped; a
        text that starts with the BOS token is tokenized without adding another; and the end of the
        assistant turn that the chat template writes after the response (a newline after the EOS, or the
        whole end of turn when the response was cut before its EOS) is completed, so that the model reads
        the sequence it was trained on."""
        tok = self.tokenizer
        text = self._unpadded(text)
        text += self._turn_end_missing(text)
        special = not (tok.bos_token and text.startswith(tok.bos_token))
        ids = tok(text, add_special_tokens=special).input_ids
        prompt_len = 0
        prompt = self._unpadded(prompt or "")
        if prompt and text.startswith(prompt):
            prompt_len = self._common_prefix(tok(prompt, add_special_tokens=special).input_ids, ids)
        return self._truncate(ids, prompt_len)

    def _unpadded(self, text: str) -> str:
        pad = self.tokenizer.pad_token
        if not pad:
            return text
        while text.startswith(pad):
            text = text[len(pad):]
        while text.endswith(pad):
            text = text[: -len(pad)]
        return text

    def _turn_end_missing(self, text: str) -> str:
        """What the chat template writes after an assistant response (e.g. ``</s>`` and a newline) that
        ``text`` does not end with yet: the rest of it after the longest part already there."""
        end = self._turn_end()
        for k in range(len(end), 0, -1):
            if text.endswith(end[:k]):
                return end[k:]
        return end

    def _turn_end(self) -> str:
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            return ""  # `encode` writes nothing after the response without a template
        if not hasattr(self, "_end_of_turn"):
            marker = "\u2063cgpo-response\u2063"
            turns = [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}]
            full = tok.apply_chat_template(turns, tokenize=False)
            self._end_of_turn = full[full.rfind(marker) + len(marker):] if marker in full else ""
        return self._end_of_turn

    def _truncate(self, ids: list[int], prompt_len: int) -> Encoded:
        if len(ids) <= self.max_length:
            return Encoded(tuple(ids), False)
        excess = len(ids) - self.max_length
        cut = min(excess, prompt_len)  # drop the start of the prompt, never the response
        ids = ids[cut:]
        return Encoded(tuple(ids[: self.max_length]), True)

    @staticmethod
    def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
        n = 0
        for x, y in zip(a, b):
            if x != y:
                break
            n += 1
        return n

    # ---------------------------------------------------------------- scoring

    def score(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        """One scalar reward per sequence, in order. Batches are formed by length under a token budget."""
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        scores: list[float] = [0.0] * len(sequences)
        for batch in self._batches([len(sequences[i]) for i in order]):
            idx = [order[i] for i in batch]
            for i, value in zip(idx, self._forward([sequences[i] for i in idx]), strict=True):
                scores[i] = value
        return scores

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Consecutive positions of sorted ``lengths`` whose padded size fits the token budget."""
        batches: list[list[int]] = []
        current: list[int] = []
        for pos, length in enumerate(lengths):
            if current and (len(current) + 1) * max(length, 1) > self.max_batch_tokens:
                batches.append(current)
                current = []
            current.append(pos)
        if current:
            batches.append(current)
        return batches

    def _forward(self, sequences: Sequence[Sequence[int]]) -> list[float]:
        import torch

        ids, mask = pad(sequences, self.pad_id, self.padding_side)
        with torch.inference_mode():
            values = last_token_rewards(self.model, ids.to(self.device), mask.to(self.device))
        self.forward_passes += 1
        self.sequences_scored += len(sequences)
        return values.float().cpu().tolist()


def weights_fingerprint(path: str, model: Any, max_length: int, dtype: str) -> str:
    """What a reward model's scores depend on, as a short hash: the checkpoint's identity and how it runs.

    For a local checkpoint, every file's relative name, size and modification time (weights, config,
    tokenizer, chat template; content is not read, so this is fast for any size, and retraining or
    replacing the files in place changes it); for a model loaded by id, the same over its snapshot in
    the Hugging Face cache (whose path names the commit), or failing that a hash of the loaded weights.
    Then the max length (truncation changes a score) and the dtype. Cached baseline rewards are keyed
    by it, never by the model's name or path alone.
    """
    import hashlib
    from pathlib import Path

    digest = hashlib.sha256(f"{max_length}\0{dtype}\0".encode())
    root = Path(path) if Path(path).is_dir() else _hub_snapshot(path)
    if root is not None:
        digest.update(str(root).encode() if root != Path(path) else b"")
        for f in sorted(root.rglob("*")):
            if f.is_file():
                stat = f.stat()
                digest.update(f"{f.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    else:  # neither a directory nor a cached snapshot: identify the weights themselves
        digest.update(str(path).encode())
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _hub_snapshot(model_id: str) -> Any:
    """The local snapshot directory of a Hugging Face model id (its path names the commit), or None."""
    from pathlib import Path

    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(model_id), local_files_only=True))
    except (OSError, ValueError):  # not a model id, or not in the local cache
        return None


def pad(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "left"):
    """(input_ids, attention_mask), both (B, T_max) int64, padded on ``side``."""
    import torch

    width = max(max(len(s) for s in sequences), 1)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, span] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def last_token_rewards(model, input_ids, attention_mask):
    """The ``score`` head's output at each row's last real token: (B, T) ids and mask → (B,) rewards.

    Position ids count real tokens only, so a reward does not depend on padding or batch mates.
    Differentiable; the caller picks grad or no-grad. Models without a ``score`` head pool themselves.
    """
    import torch

    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    # The running count of real tokens peaks exactly at the last one (also for a single real token).
    last = (attention_mask.cumsum(-1) * attention_mask).argmax(-1)  # (B,)
    captured: dict[str, Any] = {}
    head = getattr(model, "score", None)
    hook = head.register_forward_hook(lambda _m, _i, out: captured.update(out=out)) if head is not None else None
    try:
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions)
    finally:
        if hook is not None:
            hook.remove()
    if "out" not in captured:
        return out.logits[:, 0]
    per_token = captured["out"][..., 0]  # (B, T)
    return per_token[torch.arange(per_token.shape[0], device=per_token.device), last.to(per_token.device)]
