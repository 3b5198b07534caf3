"""Per-step time of the CGPO trainer on a tiny CPU world, with embedded services and with remote ones.

Builds a tiny Llama policy and reward model locally, two tasks (an IFEval lowercase instruction judged by
`instructions`, and a refusal task judged by `refusal`), and runs the same steps twice: judges and RM
embedded in the trainer's process, then the services as deployed (redis-server, gateway and worker
processes for each) reached by URL. Prints the mean per-step breakdown (generate / score / update, the
update split into log-probs without grad, backward, and the rest: loss, all-reduce, optimizer) and the
ratio of step times.

    .venv/bin/python benchmarks/bench_trainer.py --steps 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.stack import Stack, service_env  # noqa: E402
from tests.tiny_models import build_model, build_tokenizer, save_tiny_model  # noqa: E402
from cgpo.trainer.config import load_config  # noqa: E402
from cgpo.trainer.loop import train  # noqa: E402

LOWER = {"instruction_id_list": ["change_case:english_lowercase"], "kwargs": [{}]}
TOPICS = ["the sea", "a bicycle", "Rome", "bread", "a poem", "the moon", "math", "elections", "rain", "music"]


def build_world(root: Path, hidden: int) -> None:
    tok = build_tokenizer()
    save_tiny_model(root / "policy", tokenizer=tok, model=build_model(tok, hidden_size=hidden, num_heads=2,
                                                                      initializer_range=0.2))
    save_tiny_model(root / "rm", tokenizer=tok, model=build_model(tok, kind="sequence-classification",
                                                                  hidden_size=hidden, num_heads=2))
    rows = {"lower": [{"prompt": f"Write about {t} in lowercase.", "metadata": LOWER} for t in TOPICS],
            "benign": [{"prompt": f"How do I cook {t}?"} for t in TOPICS]}
    for name, lines in rows.items():
        (root / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")


def write_config(root: Path, out: str, steps: int, k: int, batch: int, tokens: int) -> Path:
    path = root / f"{out}.yaml"
    tasks = "".join(f"""
  - name: {name}
    prompts: {root}/{name}.jsonl
    reward_model: {{embedded: {root}/rm}}
    judges: [{judge}]
    optimizer: {opt}
    k: {k}
    batch_size: {batch}
    kl_max: 100
    on_truncation: keep""" for name, judge, opt in (("lower", "instructions", "crpg"), ("benign", "refusal", "crraft")))
    path.write_text(f"""
policy: {root}/policy
steps: {steps}
output_dir: {root}/{out}
generation: {{max_new_tokens: {tokens}}}
optim: {{lr: 1.0e-3, micro_batch_size: 16}}
tasks:{tasks}
""")
    return path


def summary(records: list[dict[str, float]]) -> dict[str, float]:
    rows = records[1:] or records  # the first step pays one-off warm-up (pools, caches)
    parts = {k: statistics.mean(r[f"time/{k}_s"] for r in rows) for k in COLUMNS}
    step = parts["generate"] + parts["score"] + parts["update"]
    return {**{f"{k}_s": round(v, 4) for k, v in parts.items()}, "step_s": round(step, 4)}


COLUMNS = ("generate", "score", "logprobs", "backward", "update")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        build_world(root, args.hidden)
        shape = (args.steps, args.k, args.batch_size, args.max_new_tokens)
        embedded = summary(train(load_config(write_config(root, "embedded", *shape)), resume=False,
                                 log=lambda _: None))
        env = service_env(CGPO_JUDGES_ENABLED="instructions,refusal", CGPO_RM_MODELS=f"helpful={root}/rm")
        # idle torch threads must not spin on the cores the trainer needs (OMP's default is to busy-wait)
        quiet = {"OMP_WAIT_POLICY": "passive"}
        with Stack(["judges", "serve"], ["judges", "worker"], env, redis=True, workers=1) as judges, \
                Stack(["rm", "serve"], ["rm", "worker"], env, redis=True, workers=1, worker_env=quiet) as rm:
            overrides = [f"tasks.{t}.{field}" for t in ("lower", "benign") for field in (
                f"reward_model={{url: '{rm.base}', model: helpful}}", f"judge_service={{url: '{judges.base}'}}")]
            remote = summary(train(load_config(write_config(root, "remote", *shape), overrides), resume=False,
                                   log=lambda _: None))
    print(f"{'':10}" + "".join(f"{c + ' s':>12}" for c in (*COLUMNS, "step")))
    for name, row in (("embedded", embedded), ("remote", remote)):
        print(f"{name:10}" + "".join(f"{row[c + '_s']:>12}" for c in (*COLUMNS, "step")))
    ratio = remote["step_s"] / embedded["step_s"]
    print(f"remote / embedded step time: {ratio:.3f}")
    print(json.dumps({"config": vars(args), "embedded": embedded, "remote": remote, "remote_over_embedded":
                      round(ratio, 3)}))


if __name__ == "__main__":
    main()
