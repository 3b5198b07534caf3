"""``cgpo data import FORMAT SRC --out FILE``: the datasets people have, as the project's files.

``SRC`` is JSONL (one object per line), a JSON array, or Parquet (``.parquet``; what Hugging Face
``datasets`` exports, read with pyarrow), with the columns of the dataset as published. Prompt formats
write a prompt file (``prompt``, ``metadata`` for the judges, ``baseline`` — the reference response ā
of the calibrated reward, where the dataset has one); pair formats write the preference pairs that
``cgpo rm train`` and ``cgpo warmup`` read. Every record written is checked by the reader that will
read it; a row that cannot be converted is skipped with its reason, never guessed.

Prompt formats:

* ``gsm8k`` — ``question``, ``answer`` (worked solution ending ``#### N``): metadata ``answer`` N for the
  ``math`` judge; the solution, calculator annotations ``<<48/2=24>>`` removed, as baseline.
* ``math`` — MATH (``problem``, ``solution`` with the answer in its last ``\\boxed{}``): metadata
  ``answer`` the boxed content; the solution as baseline.
* ``humaneval`` — ``prompt`` (signature and docstring), ``canonical_solution``, ``test``, ``entry_point``:
  metadata ``test`` and ``entry_point`` for the ``code`` judge; the prompt asks for the whole function in
  a code block; the canonical function as baseline.
* ``mbpp`` — ``text`` (or ``prompt`` in the sanitized split), ``code``, ``test_list``, ``test_setup_code``
  / ``test_imports``: metadata ``unit_tests`` (setup and imports first); the tests shown in the prompt
  (the function's name and signature come from them); ``code`` as baseline.
* ``ifeval`` — ``prompt``, ``instruction_id_list``, ``kwargs`` (null arguments dropped): metadata for the
  ``instructions`` judge.
* ``messages`` — chat ``messages`` lists (any roles; keys besides ``role`` and ``content``, such as
  ``name``, are dropped): the conversation up to its last assistant turn as the prompt, that turn as
  baseline.
* ``trl`` — TRL's prompt-only and prompt-completion datasets, standard (``prompt`` a string) or
  conversational (``prompt`` a list of messages); ``completion`` (or ``chosen``), if present, as
  baseline.

Every prompt format takes ``--metadata KEY=COLUMN`` to copy other columns into the metadata (e.g.
``answer=solution`` for a TRL math dataset).

Pair formats:

* ``hh-rlhf`` — Anthropic HH-RLHF's ``chosen`` / ``rejected`` transcripts (``\\n\\nHuman: …\\n\\nAssistant:
  …``): the text they share up to the last ``Assistant:`` is the prompt (the human turn for a one-turn
  dialogue, the transcript so far for a longer one), the two last replies chosen and rejected.
* ``ultrafeedback`` — UltraFeedback binarized: ``prompt``, and ``chosen`` / ``rejected`` as message lists
  (or strings); their last assistant turns.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

PROMPT_FORMATS = ("gsm8k", "math", "humaneval", "mbpp", "ifeval", "messages", "trl")
PAIR_FORMATS = ("hh-rlhf", "ultrafeedback")
FORMATS = PROMPT_FORMATS + PAIR_FORMATS


class Skip(ValueError):
    """This row cannot be converted (the message says why)."""


def read_rows(path: str | Path) -> Iterator[dict[str, Any]]:
    """The rows of a JSONL, JSON-array or Parquet file, as dicts."""
    path = Path(path)
    if path.suffix in (".parquet", ".pq"):
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ValueError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from exc
        yield from pq.read_table(path).to_pylist()
        return
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        rows = json.loads(text)
        yield from rows
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: invalid JSON: {exc.msg}") from None


def convert(fmt: str, rows: Iterator[dict[str, Any]], metadata_columns: dict[str, str] | None = None,
            ) -> tuple[list[dict[str, Any]], list[str]]:
    """(records, skipped rows' reasons as ``row N: why``) of ``rows`` in format ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if metadata_columns and fmt in PAIR_FORMATS:
        raise ValueError("--metadata applies to prompt formats only")
    records, skipped = [], []
    for number, row in enumerate(rows, start=1):
        try:
            record = CONVERTERS[fmt](row)
            for key, column in (metadata_columns or {}).items():
                if row.get(column) is None:
                    raise Skip(f"no value in column {column!r} for metadata {key!r}")
                record.setdefault("metadata", {})[key] = row[column]
            records.append(record)
        except Skip as exc:
            skipped.append(f"row {number}: {exc}")
    return records, skipped


def _text(row: dict[str, Any], *columns: str) -> str:
    for column in columns:
        value = row.get(column)
        if isinstance(value, str) and value.strip():
            return value
    raise Skip(f"no text in column {' or '.join(repr(c) for c in columns)}")


_CALCULATOR = re.compile(r"<<[^<>\n]*>>")


def gsm8k(row: dict[str, Any]) -> dict[str, Any]:
    from cgpo.services.judges.math import extract_gsm8k  # what the math judge reads as GSM8K's answer

    question, solution = _text(row, "question"), _text(row, "answer")
    found = extract_gsm8k(solution)
    if not found:
        raise Skip("the answer has no '#### N' line")
    return {"prompt": question, "metadata": {"answer": found.replace(",", "")},
            "baseline": _CALCULATOR.sub("", solution)}


def math(row: dict[str, Any]) -> dict[str, Any]:
    from cgpo.services.judges.math import extract_boxed

    problem, solution = _text(row, "problem"), _text(row, "solution")
    answer = extract_boxed(solution)
    if not answer:
        raise Skip("the solution has no \\boxed{} answer")
    return {"prompt": problem, "metadata": {"answer": answer}, "baseline": solution}


def humaneval(row: dict[str, Any]) -> dict[str, Any]:
    header, test, entry = _text(row, "prompt"), _text(row, "test"), _text(row, "entry_point")
    record: dict[str, Any] = {
        "prompt": ("Complete the following Python function. Reply with the whole function, imports included, "
                   f"in one ```python code block.\n\n```python\n{header.rstrip()}\n```"),
        "metadata": {"test": test, "entry_point": entry}}
    if isinstance(row.get("canonical_solution"), str):
        record["baseline"] = f"```python\n{header}{row['canonical_solution'].rstrip()}\n```"
    return record


def mbpp(row: dict[str, Any]) -> dict[str, Any]:
    task = _text(row, "text", "prompt")
    tests = row.get("test_list")
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise Skip("no test_list of assert statements")
    setup = [s for s in (row.get("test_setup_code"), *(row.get("test_imports") or [])) if isinstance(s, str) and s]
    shown = "\n".join(tests)
    record: dict[str, Any] = {
        "prompt": f"{task.strip()}\nYour code should pass these tests:\n\n```python\n{shown}\n```\n"
                  "Reply with the code in one ```python code block.",
        "metadata": {"unit_tests": [*setup, *tests]}}
    if isinstance(row.get("code"), str):
        record["baseline"] = f"```python\n{row['code'].strip()}\n```"
    return record


def ifeval(row: dict[str, Any]) -> dict[str, Any]:
    prompt, ids, kwargs = _text(row, "prompt"), row.get("instruction_id_list"), row.get("kwargs")
    if not isinstance(ids, list) or not ids:
        raise Skip("no instruction_id_list")
    if kwargs is None:
        kwargs = [{} for _ in ids]
    if not isinstance(kwargs, list) or len(kwargs) != len(ids):
        raise Skip("kwargs must hold one object per instruction")
    kwargs = [{k: v for k, v in (kw or {}).items() if v is not None} for kw in kwargs]
    return {"prompt": prompt, "metadata": {"instruction_id_list": ids, "kwargs": kwargs}}


def _turns(messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise Skip("no messages list")
    turns = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not message["role"]:
            raise Skip("a message without a role")
        content = message.get("content")
        if not isinstance(content, str):
            raise Skip(f"a {message['role']} message whose content is not text")
        turns.append({"role": message["role"], "content": content})
    return turns


def messages(row: dict[str, Any]) -> dict[str, Any]:
    turns = _turns(row.get("messages"))
    last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=None)
    if last is None:
        return {"prompt": turns}
    if last == 0:
        raise Skip("the conversation starts with the assistant's turn: no prompt before it")
    return {"prompt": turns[:last], "baseline": turns[last]["content"]}


def trl(row: dict[str, Any]) -> dict[str, Any]:
    prompt = row.get("prompt")
    record: dict[str, Any] = {"prompt": _turns(prompt) if isinstance(prompt, list) else _text(row, "prompt")}
    reference = row.get("completion", row.get("chosen"))
    if isinstance(reference, list):
        replies = [t["content"] for t in _turns(reference) if t["role"] == "assistant"]
        reference = replies[-1] if replies else None
    if isinstance(reference, str) and reference.strip():
        record["baseline"] = reference
    return record


_ASSISTANT = "\n\nAssistant:"
_HUMAN = "\n\nHuman:"


def hh_rlhf(row: dict[str, Any]) -> dict[str, Any]:
    chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
    cut = min(chosen.rfind(_ASSISTANT), rejected.rfind(_ASSISTANT))
    if cut < 0 or chosen[:cut] != rejected[:cut] or chosen.rfind(_ASSISTANT) != rejected.rfind(_ASSISTANT):
        raise Skip("chosen and rejected do not share the dialogue before their last Assistant turn")
    context = chosen[:cut]
    pair = {"chosen": chosen[cut + len(_ASSISTANT):].strip(), "rejected": rejected[cut + len(_ASSISTANT):].strip()}
    if context.count(_HUMAN) == 1 and context.startswith(_HUMAN):
        prompt = context[len(_HUMAN):].strip()  # one human turn: the turn itself
    else:
        prompt = context.strip()  # the transcript so far, as the one user turn the RM scores
    return _pair(prompt, pair["chosen"], pair["rejected"])


def ultrafeedback(row: dict[str, Any]) -> dict[str, Any]:
    def reply(value: Any) -> str:
        if isinstance(value, str):
            return value
        replies = [t["content"] for t in _turns(value) if t["role"] == "assistant"]
        if not replies:
            raise Skip("a side with no assistant turn")
        return replies[-1]

    return _pair(_text(row, "prompt"), reply(row.get("chosen")), reply(row.get("rejected")))


def _pair(prompt: str, chosen: str, rejected: str) -> dict[str, str]:
    if not prompt.strip() or not chosen.strip() or not rejected.strip():
        raise Skip("an empty prompt, chosen or rejected")
    if chosen == rejected:
        raise Skip("chosen and rejected are identical")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


CONVERTERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "gsm8k": gsm8k, "math": math, "humaneval": humaneval, "mbpp": mbpp, "ifeval": ifeval, "messages": messages,
    "trl": trl, "hh-rlhf": hh_rlhf, "ultrafeedback": ultrafeedback}


def import_file(fmt: str, source: str | Path, out: str | Path, metadata_columns: dict[str, str] | None = None,
                limit: int | None = None) -> tuple[int, list[str]]:
    """Convert ``source`` to ``out``; returns (records written, skipped rows' reasons). The file written
    is read back by the project's own reader (prompt file or pairs) before this returns."""
    from cgpo.instructions import write_jsonl

    rows = read_rows(source)
    records, skipped = convert(fmt, rows, metadata_columns)
    if limit is not None:
        records = records[:limit]
    if not records:
        raise ValueError(f"{source}: no row could be converted as {fmt}" +
                         (f" ({skipped[0]}{', ...' if len(skipped) > 1 else ''})" if skipped else ""))
    out = Path(out)
    staged = out.with_name(out.name + ".tmp")  # ``out`` is replaced only by a file its reader accepts
    try:
        written = write_jsonl(staged, records)
        _check(fmt, staged)
        staged.replace(out)
    finally:
        staged.unlink(missing_ok=True)
    return written, skipped


def _check(fmt: str, out: str | Path) -> None:
    if fmt in PAIR_FORMATS:
        from cgpo.pairs import load_pairs

        load_pairs(out)
    else:
        from cgpo.trainer.data import load_prompts

        load_prompts(out)
