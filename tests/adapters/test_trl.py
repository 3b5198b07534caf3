"""A real TRL ``GRPOTrainer`` trains with the judges as reward functions, against a running ``cgpo judges
serve``: sync and async functions, IFEval's columns as the dataset has them, per-judge metrics in TRL's log.

Runs in its own environment (``make trl-env``: torch 2.13.0 pinned first, then TRL), like the vLLM tests.
"""

from __future__ import annotations

import json
import os
from importlib.util import find_spec

import pytest

from tests.conftest import free_port
from tests.procs import answers_200, spawn, stop, wait_until

pytestmark = [pytest.mark.trl,
              pytest.mark.skipif(find_spec("trl") is None, reason="trl is not importable: run under .venv-trl")]

LOWER = "change_case:english_lowercase"


@pytest.fixture(scope="module")
def judges_url():
    env = {k: v for k, v in os.environ.items() if not k.startswith("CGPO_")}
    env.update(CGPO_JUDGES_ENABLED="instructions,math", CGPO_LOG_LEVEL="warning")
    port = free_port()
    proc = spawn(["judges", "serve", "--port", str(port)], env)
    try:
        wait_until(lambda: answers_200(f"http://127.0.0.1:{port}/readyz"), 90, "cgpo judges serve")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def test_grpo_trains_on_judge_rewards(tmp_path, judges_url):
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from cgpo.adapters.trl import judge_reward
    from tests.tiny_models import build_model, build_tokenizer, save_tiny_model

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    policy = save_tiny_model(tmp_path / "policy", tokenizer=tokenizer, model=build_model(tokenizer))
    topics = ["the sea", "rain", "a bicycle", "bread", "the moon", "music", "trees", "Rome"]
    rows = [{"prompt": f"Write about {t} in lowercase.", "instruction_id_list": [LOWER],
             "kwargs": [{"num_words": None, "relation": None}]} for t in topics]  # as the HF dataset nulls them
    rows += [{"prompt": "What is 2+2?", "instruction_id_list": None, "kwargs": None, "answer": "4"}] * 2
    for row in rows[:-2]:
        row["answer"] = None
    dataset = Dataset.from_list(rows)
    sync = judge_reward("instructions", url=judges_url)
    asynchronous = judge_reward(["instructions"], url=judges_url, asynchronous=True, name="cgpo_async",
                                values={"pass": 2.0, "fail": -1.0})
    config = GRPOConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4,
                        num_generations=4, max_completion_length=8, logging_steps=1, report_to=[], use_cpu=True,
                        bf16=False, learning_rate=1e-3, save_strategy="no", seed=0)
    trainer = GRPOTrainer(model=str(policy), reward_funcs=[sync, asynchronous], args=config, train_dataset=dataset,
                          processing_class=tokenizer)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry or "reward" in entry]
    assert trainer.state.global_step == 2 and logs
    keys = set().union(*logs)
    assert {"rewards/cgpo_instructions/mean", "rewards/cgpo_async/mean", "cgpo_instructions/instructions/pass_rate",
            "cgpo_instructions/instructions/error_rate", "cgpo_instructions/applicable"} <= keys, sorted(keys)
    for entry in logs:
        if "cgpo_instructions/instructions/pass_rate" in entry:
            rate = entry["cgpo_instructions/instructions/pass_rate"]
            # the two functions judged the same completions: 2·rate − (1 − rate) for the async one's mapping
            assert entry["rewards/cgpo_instructions/mean"] == pytest.approx(rate, abs=1e-5)
            assert entry["rewards/cgpo_async/mean"] == pytest.approx(3 * rate - 1, abs=1e-5)
            assert entry["cgpo_instructions/instructions/error_rate"] == 0.0
    json.dumps(logs)  # plain numbers, as TRL's loggers need
