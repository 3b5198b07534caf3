"""Bradley–Terry reward-model training (services/rm/train.py) on a tiny local Llama.

The synthetic preference task is instruction following: the prompt asks for one of a pair of
words (Yes/No, True/False, safe/unsafe) and the chosen response gives that word where the rejected
one gives the other, the rest being equal. Which word wins depends on the prompt, so an untrained
model sits near chance however its random head happens to rank the words.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from cgpo.pairs import load_pairs, split_pairs  # noqa: E402
from cgpo.services.rm.model import RewardModel, last_token_rewards, pad  # noqa: E402
from cgpo.services.rm.train import (  # noqa: E402
    REPORT_FILE,
    TrainConfig,
    bradley_terry_loss,
    lr_factor,
    run,
    train_reward_model,
)
from tests.tiny_models import _OBJECTS, build_model, build_tokenizer, save_tiny_model  # noqa: E402

WORD_PAIRS = [("Yes", "No"), ("True", "False"), ("safe", "unsafe")]


def preferences(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        good, bad = rng.choice(WORD_PAIRS)
        if rng.random() < 0.5:
            good, bad = bad, good
        topic = rng.choice(_OBJECTS)
        rows.append({"prompt": f"Is it about {rng.choice(_OBJECTS)}? Answer {good}.",
                     "chosen": f"{good}, {topic}.", "rejected": f"{bad}, {topic}."})
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def without_run_details(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("config", "elapsed_s")}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """On a shared 2-core machine, torch's second thread spin-waits behind other processes: training
    that takes ~2 s on one thread was measured at 70-100 s on two under load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A tiny causal LM (no score head): training adds one, as from a real base checkpoint."""
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, initializer_range=0.2)  # less uniform states: learns in a few epochs
    return save_tiny_model(tmp_path_factory.mktemp("base"), tokenizer=tokenizer, model=model)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "prefs.jsonl", preferences(400))


@pytest.fixture(scope="module")
def trained(base_dir, data_file, tmp_path_factory) -> tuple[TrainConfig, dict, list[str]]:
    config = TrainConfig(base=str(base_dir), data=str(data_file), out=str(tmp_path_factory.mktemp("rm") / "out"),
                         epochs=4, lr=3e-3, batch_size=8, max_length=64, eval_fraction=0.25, warmup_ratio=0.1)
    lines: list[str] = []
    return config, train_reward_model(config, log=lines.append), lines


# -------------------------------------------------------------------- learning


def test_training_lifts_held_out_accuracy_from_chance(trained):
    config, report, lines = trained
    before, after = report["eval_before"], report["eval_after"]
    assert report["pairs"] == {"total": 400, "train": 300, "eval": 100, "truncated": 0}
    assert report["steps"] == 4 * math.ceil(300 / 8)
    assert 0.3 <= before["accuracy"] <= 0.7, before  # the fresh head knows nothing
    assert after["accuracy"] >= 0.8, after
    assert after["loss"] < before["loss"] and after["margin"] > before["margin"]
    assert report["train_loss_per_epoch"][-1] < report["train_loss_per_epoch"][0]
    assert any("before training" in line for line in lines) and any("after training" in line for line in lines)
    assert json.loads((Path(config.out) / REPORT_FILE).read_text()) == report


def test_saved_model_serves_with_reward_model_and_ranks_held_out_pairs(trained):
    config, report, _ = trained
    rm = RewardModel("helpfulness", config.out, max_length=config.max_length)
    rm.load()
    assert rm.model.config.num_labels == 1 and rm.model.config.pad_token_id == rm.tokenizer.pad_token_id
    _, held_out = split_pairs(load_pairs(config.data), config.eval_fraction, config.seed)
    chosen = rm.score([rm.encode(p.prompt, p.chosen).ids for p in held_out])
    rejected = rm.score([rm.encode(p.prompt, p.rejected).ids for p in held_out])
    margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    assert sum(m > 0 for m in margins) / len(margins) >= 0.8
    # The service reads the reward exactly where training did: same held-out margin.
    assert sum(margins) / len(margins) == pytest.approx(report["eval_after"]["margin"], rel=1e-4, abs=1e-4)


def test_reward_is_the_same_whatever_the_padding_or_batch(trained):
    config, _, _ = trained
    rm = RewardModel("rm", config.out, max_length=config.max_length)
    rm.load()
    sequences = [rm.encode("Is it about elections? Answer Yes.", "Yes, elections.").ids, (rm.tokenizer.bos_token_id,),
                 rm.encode("Answer No.", "No.").ids]
    with torch.no_grad():
        alone = [last_token_rewards(rm.model, *pad([s], rm.tokenizer.pad_token_id)).item() for s in sequences]
        for side in ("left", "right"):
            batched = last_token_rewards(rm.model, *pad(sequences, rm.tokenizer.pad_token_id, side)).tolist()
            assert batched == pytest.approx(alone, abs=1e-5), side
    multi_token = [0, 2]  # the service's own reading (model.py) on sequences of more than one token
    assert rm.score([sequences[i] for i in multi_token]) == pytest.approx([alone[i] for i in multi_token], abs=1e-5)


def test_same_seed_gives_the_same_report(base_dir, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", preferences(48, seed=3))

    def train(out: str, seed: int) -> dict:
        config = TrainConfig(base=str(base_dir), data=str(data), out=str(tmp_path / out), epochs=1, lr=1e-3,
                             batch_size=8, max_length=64, eval_fraction=0.25, seed=seed)
        return without_run_details(train_reward_model(config, log=None))

    first = train("a", seed=7)
    assert train("b", seed=7) == first
    assert train("c", seed=8) != first


def test_a_base_without_pad_id_gets_the_tokenizers_and_serves_batches(tmp_path):
    tokenizer = build_tokenizer()
    model = build_model(tokenizer)
    model.config.pad_token_id = None  # as many causal-LM checkpoints ship
    base = save_tiny_model(tmp_path / "base", tokenizer=tokenizer, model=model)
    data = write_jsonl(tmp_path / "prefs.jsonl", preferences(16, seed=4))
    config = TrainConfig(base=str(base), data=str(data), out=str(tmp_path / "out"), max_length=64, eval_fraction=0)
    report = train_reward_model(config, log=None)
    assert report["eval_before"] is None and report["eval_after"] is None and report["pairs"]["train"] == 16
    rm = RewardModel("rm", config.out, max_length=64)
    rm.load()
    assert rm.model.config.pad_token_id == tokenizer.pad_token_id
    assert len(rm.score([rm.encode("Answer Yes.", "Yes.").ids, rm.encode("Answer No.", "No, no.").ids])) == 2


# -------------------------------------------------------------------- pure parts


def test_bradley_terry_loss_values_and_gradient_sign():
    r_chosen = torch.tensor([0.0, 2.0], requires_grad=True)
    r_rejected = torch.tensor([0.0, 1.0], requires_grad=True)
    loss = bradley_terry_loss(r_chosen, r_rejected)
    expected = (math.log(2) + math.log(1 + math.exp(-1))) / 2  # mean of −log σ(0), −log σ(1)
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert (r_chosen.grad < 0).all() and (r_rejected.grad > 0).all()  # descent raises chosen, lowers rejected
    assert torch.allclose(r_chosen.grad, -r_rejected.grad)


def test_split_is_seeded_disjoint_and_complete():
    items = list(range(50))
    train, held_out = split_pairs(items, 0.2, seed=1)
    assert len(held_out) == 10 and sorted(train + held_out) == items
    assert split_pairs(items, 0.2, seed=1) == (train, held_out)
    assert split_pairs(items, 0.2, seed=2) != (train, held_out)
    assert split_pairs(items, 0.0, seed=1)[1] == []
    assert len(split_pairs(items[:3], 0.01, seed=1)[1]) == 1  # a positive fraction holds out at least one
    with pytest.raises(ValueError, match="no training pairs"):
        split_pairs(items[:1], 0.5, seed=1)


def test_lr_schedule_warms_up_then_decays_without_dead_steps():
    total, warmup = 20, 5
    factors = [lr_factor(s, total, warmup) for s in range(total)]
    assert factors[warmup - 1] == 1.0 and max(factors) == 1.0
    assert factors[:warmup] == sorted(factors[:warmup]) and factors[warmup - 1:] == sorted(factors[warmup - 1:],
                                                                                             reverse=True)
    assert all(f > 0 for f in factors)
    assert [lr_factor(s, 4, 0) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]


# -------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("line", "why"), [
    ('{"prompt": "Hi", "chosen": "a"', "invalid JSON"),
    ('["Hi", "a", "b"]', "JSON object"),
    ('{"prompt": "Hi", "chosen": "a"}', "'rejected'"),
    ('{"prompt": "Hi", "chosen": " ", "rejected": "b"}', "'chosen'"),
    ('{"prompt": "", "chosen": "a", "rejected": "b"}', "'prompt'"),
    ('{"prompt": "Hi", "chosen": "a", "rejected": 3}', "'rejected'"),
    ('{"prompt": "Hi", "chosen": "same", "rejected": "same"}', "identical"),
    ('{"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}], '
     '"chosen": "a", "rejected": "b"}', "one user message"),
])
def test_bad_data_is_rejected_with_file_and_line_before_training(base_dir, tmp_path, line, why):
    good = json.dumps({"prompt": "Hi", "chosen": "a", "rejected": "b"})
    data = write_jsonl(tmp_path / "prefs.jsonl", [good, "", line, good])
    with pytest.raises(ValueError, match=why) as info:
        train_reward_model(TrainConfig(base=str(base_dir), data=str(data), out=str(tmp_path / "out")), log=None)
    assert str(info.value).startswith(f"{data}:3: ")
    assert not (tmp_path / "out").exists()


def test_a_single_user_message_prompt_is_accepted_and_empty_files_are_not(tmp_path):
    row = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": "a", "rejected": "b", "id": 7}
    [pair] = load_pairs(write_jsonl(tmp_path / "chat.jsonl", [row]))
    assert (pair.prompt, pair.chosen, pair.rejected) == ("Hi", "a", "b")
    with pytest.raises(ValueError, match="no preference pairs"):
        load_pairs(write_jsonl(tmp_path / "empty.jsonl", ["", "  "]))


@pytest.mark.parametrize(("field", "value"), [
    ("epochs", 0), ("epochs", True), ("epochs", 1.5), ("lr", 0.0), ("lr", float("nan")), ("batch_size", 0),
    ("max_length", 0), ("eval_fraction", 1.0), ("eval_fraction", -0.1), ("warmup_ratio", 1.5),
    ("weight_decay", -1.0), ("max_grad_norm", 0.0), ("seed", "x"), ("device", "gpu"),
    ("base", "/nonexistent/model"), ("data", "/nonexistent.jsonl"), ("out", ""), ("out", "BASE"),
])
def test_bad_config_names_the_field(base_dir, data_file, field, value):
    kwargs = {"base": str(base_dir), "data": str(data_file), "out": "/tmp/unused-rm-out"}
    kwargs[field] = str(base_dir) if value == "BASE" else value
    with pytest.raises(ValueError) as info:
        TrainConfig(**kwargs)
    assert str(info.value).startswith(f"{field}: ")


# -------------------------------------------------------------------- CLI


def test_cli_flags_default_to_the_config_and_run_trains(base_dir, tmp_path, capsys):
    from cgpo.cli import build_parser

    data = write_jsonl(tmp_path / "prefs.jsonl", preferences(24, seed=5))
    args = build_parser().parse_args(["rm", "train", "--base", str(base_dir), "--data", str(data), "--out",
                                      str(tmp_path / "out"), "--max-length", "64", "--eval-fraction", "0.25"])
    defaults = TrainConfig(base=str(base_dir), data=str(data), out=str(tmp_path / "out"))
    assert (args.epochs, args.lr, args.batch_size, args.seed, args.device) == (
        defaults.epochs, defaults.lr, defaults.batch_size, defaults.seed, defaults.device)
    assert run(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["pairs"]["eval"] == 6 and (tmp_path / "out" / REPORT_FILE).is_file()

    args.lr = -1.0
    with pytest.raises(ValueError, match="lr: must be > 0"):
        run(args)
