"""``cgpo data import``: rows in each dataset's published layout become records the project's readers accept
and its judges judge as the dataset means — the dataset's own solution passes, a wrong one fails."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cgpo.cli import main
from cgpo.importers import FORMATS, convert, import_file, read_rows
from cgpo.pairs import load_pairs
from cgpo.services.judges.base import Sample
from cgpo.trainer.data import load_prompts

GSM8K = {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                     "How many clips did Natalia sell altogether in April and May?",
         "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
                   "altogether in April and May.\n#### 72"}
MATH = {"problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?", "level": "Level 1", "type": "Prealgebra",
        "solution": "We have $\\frac{1}{2} + \\frac{1}{4} = \\frac{2}{4} + \\frac{1}{4} = \\boxed{\\frac{3}{4}}$."}
HUMANEVAL = {"task_id": "HumanEval/53", "prompt": "\n\ndef add(x: int, y: int):\n    \"\"\"Add two numbers x and y\n"
             "    >>> add(2, 3)\n    5\n    \"\"\"\n", "canonical_solution": "    return x + y\n",
             "test": "\n\nMETADATA = {}\n\n\ndef check(candidate):\n    assert candidate(0, 1) == 1\n"
                     "    assert candidate(5, 7) == 12\n", "entry_point": "add"}
MBPP = {"task_id": 2, "text": "Write a function to find the shared elements from the given two lists.",
        "code": "def similar_elements(a, b):\n    return tuple(set(a) & set(b))",
        "test_list": ["assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))",
                      "assert set(similar_elements((1, 2, 3, 4),(5, 4, 3, 7))) == set((3, 4))"],
        "test_setup_code": "", "challenge_test_list": []}
IFEVAL = {"key": 1000, "prompt": "Write a haiku about rain in all lowercase letters.",
          "instruction_id_list": ["change_case:english_lowercase"],
          "kwargs": [{"num_highlights": None, "relation": None}]}
MESSAGES = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Name a colour.", "name": "ana"},
                         {"role": "assistant", "content": "Blue."},
                         {"role": "user", "content": "Another?"},
                         {"role": "assistant", "content": "Green."}]}
TRL_STANDARD = {"prompt": "The sky is", "completion": " blue.", "solution": "blue"}
TRL_CONVERSATIONAL = {"prompt": [{"role": "user", "content": "What colour is the sky?"}]}
HH = {"chosen": "\n\nHuman: What is a good name for a cat?\n\nAssistant: Whiskers is a classic.",
      "rejected": "\n\nHuman: What is a good name for a cat?\n\nAssistant: I don't know."}
HH_LONG = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke.\n\nAssistant: Why did the "
                     "chicken cross the road?", "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a "
                                                            "joke.\n\nAssistant: No."}
ULTRAFEEDBACK = {"prompt": "Explain rain.", "prompt_id": "x",
                 "chosen": [{"role": "user", "content": "Explain rain."},
                            {"role": "assistant", "content": "Water vapour condenses and falls."}],
                 "rejected": [{"role": "user", "content": "Explain rain."}, {"role": "assistant", "content": "Magic."}],
                 "score_chosen": 8.0, "score_rejected": 2.0}


def write(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_gsm8k_and_math_answers_are_the_datasets_and_their_solutions_pass(tmp_path, suffix):
    from cgpo.services.judges.math import MathJudge

    gsm8k, _ = import_file("gsm8k", write(tmp_path / f"gsm8k{suffix}", [GSM8K]), tmp_path / "gsm8k.jsonl")
    math, _ = import_file("math", write(tmp_path / f"math{suffix}", [MATH]), tmp_path / "math.jsonl")
    assert gsm8k == math == 1
    [g] = load_prompts(tmp_path / "gsm8k.jsonl")
    [m] = load_prompts(tmp_path / "math.jsonl")
    assert g.metadata == {"answer": "72"} and "<<" not in g.baseline and g.baseline.endswith("#### 72")
    assert m.metadata == {"answer": "\\frac{3}{4}"}
    with MathJudge(workers=1) as judge:
        verdicts = judge.judge([Sample(g.prompt, g.baseline, g.metadata), Sample(m.prompt, m.baseline, m.metadata),
                                Sample(g.prompt, "#### 71", g.metadata),
                                Sample(m.prompt, "\\boxed{\\frac{1}{4}}", m.metadata)])
    assert [v.verdict for v in verdicts] == ["pass", "pass", "fail", "fail"]


def test_humaneval_and_mbpp_tests_become_the_code_judges_and_their_solutions_pass(tmp_path):
    from cgpo.services.judges.code import CodeJudge

    import_file("humaneval", write(tmp_path / "he.jsonl", [HUMANEVAL]), tmp_path / "humaneval.jsonl")
    import_file("mbpp", write(tmp_path / "mbpp.jsonl", [MBPP]), tmp_path / "mbpp.jsonl")
    [h] = load_prompts(tmp_path / "humaneval.jsonl")
    [b] = load_prompts(tmp_path / "mbpp.jsonl")
    assert h.metadata["entry_point"] == "add" and "def add(x: int, y: int)" in h.prompt
    assert b.metadata["unit_tests"] == MBPP["test_list"] and MBPP["test_list"][0] in b.prompt
    wrong = "```python\ndef add(x, y):\n    return x - y\n```"
    with CodeJudge(workers=1, sandbox="weak") as judge:
        verdicts = judge.judge([Sample(h.prompt, h.baseline, h.metadata), Sample(b.prompt, b.baseline, b.metadata),
                                Sample(h.prompt, wrong, h.metadata),
                                Sample(b.prompt, "```python\ndef similar_elements(a, b):\n    return ()\n```",
                                       b.metadata)])
    assert [v.verdict for v in verdicts] == ["pass", "pass", "fail", "fail"]


def test_ifeval_rows_as_the_hugging_face_dataset_has_them(tmp_path):
    from cgpo.services.judges.instructions import InstructionsJudge

    import_file("ifeval", write(tmp_path / "ifeval.parquet", [IFEVAL]), tmp_path / "ifeval.jsonl")
    [p] = load_prompts(tmp_path / "ifeval.jsonl")
    assert p.metadata == {"instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}
    with InstructionsJudge(workers=1) as judge:
        verdicts = judge.judge([Sample(p.prompt, "soft rain on the roof", p.metadata),
                                Sample(p.prompt, "Soft Rain", p.metadata)])
    assert [v.verdict for v in verdicts] == ["pass", "fail"]


def test_chat_and_trl_prompts(tmp_path):
    records, skipped = convert("messages", iter([MESSAGES, {"messages": [{"role": "assistant", "content": "Hi"}]}]))
    assert skipped == ["row 2: the conversation starts with the assistant's turn: no prompt before it"]
    assert records == [{"prompt": [{"role": "system", "content": "Be brief."},
                                   {"role": "user", "content": "Name a colour."},
                                   {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"}],
                        "baseline": "Green."}]
    write(tmp_path / "trl.jsonl", [TRL_STANDARD, TRL_CONVERSATIONAL])
    written, skipped = import_file("trl", tmp_path / "trl.jsonl", tmp_path / "out.jsonl")
    standard, conversational = load_prompts(tmp_path / "out.jsonl")
    assert written == 2 and skipped == []
    assert (standard.prompt, standard.baseline) == ("The sky is", " blue.")
    assert conversational.prompt == (("user", "What colour is the sky?"),) and conversational.baseline is None
    # a column copied into the metadata: rows without it are skipped, not written without it
    written, skipped = import_file("trl", tmp_path / "trl.jsonl", tmp_path / "mapped.jsonl", {"answer": "solution"})
    assert written == 1 and skipped == ["row 2: no value in column 'solution' for metadata 'answer'"]
    assert load_prompts(tmp_path / "mapped.jsonl")[0].metadata == {"answer": "blue"}


def test_preference_pairs_from_hh_rlhf_and_ultrafeedback(tmp_path):
    import_file("hh-rlhf", write(tmp_path / "hh.jsonl", [HH, HH_LONG]), tmp_path / "hh-pairs.jsonl")
    import_file("ultrafeedback", write(tmp_path / "uf.parquet", [ULTRAFEEDBACK]), tmp_path / "uf-pairs.jsonl")
    short, long = load_pairs(tmp_path / "hh-pairs.jsonl")
    assert (short.prompt, short.chosen, short.rejected) == ("What is a good name for a cat?", "Whiskers is a classic.",
                                                            "I don't know.")
    assert long.prompt == "Human: Hi\n\nAssistant: Hello!\n\nHuman: Tell me a joke." and long.rejected == "No."
    [uf] = load_pairs(tmp_path / "uf-pairs.jsonl")
    assert (uf.prompt, uf.chosen, uf.rejected) == ("Explain rain.", "Water vapour condenses and falls.", "Magic.")


def test_the_command_writes_nothing_for_bad_input_and_reports_skips(tmp_path, capsys):
    source = write(tmp_path / "gsm8k.jsonl", [GSM8K, {"question": "no answer line", "answer": "72"}])
    out = tmp_path / "out.jsonl"
    out.write_text("kept\n")
    with pytest.raises(SystemExit) as stopped:
        main(["data", "import", "nope", str(source), "--out", str(out)])
    assert stopped.value.code == 2 and "unknown format 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["data", "import", "math", str(source), "--out", str(out)])  # no row is MATH
    assert "no row could be converted as math" in capsys.readouterr().err
    assert out.read_text() == "kept\n"  # untouched
    assert main(["data", "import", "gsm8k", str(source), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "wrote 1 records" in captured.out and "row 2: the answer has no '#### N' line" in captured.err
    assert len(load_prompts(out)) == 1 and sorted(FORMATS) == sorted(
        ["gsm8k", "math", "humaneval", "mbpp", "ifeval", "messages", "trl", "hh-rlhf", "ultrafeedback"])
    assert list(read_rows(out))[0]["metadata"] == {"answer": "72"}
