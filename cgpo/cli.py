"""The ``cgpo`` command. Subcommands import their heavy parts only when run."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return _dispatch(args, parser)


def build_parser() -> argparse.ArgumentParser:
    """The ``cgpo`` command line (every subcommand), without running anything."""
    parser = argparse.ArgumentParser(prog="cgpo", description="CGPO: constrained RLHF with a mixture of judges.")
    sub = parser.add_subparsers(dest="command", required=True)

    judges = sub.add_parser("judges", help="the judges service").add_subparsers(dest="action", required=True)
    _add_listen(judges.add_parser("serve", help="run the judges REST gateway (embedded judges unless CGPO_REDIS_URL)"))
    _add_burst(judges.add_parser("worker", help="serve the judges queue on CGPO_REDIS_URL"))
    judges.add_parser("demo", help="start the service on loopback and judge example responses over REST")

    rm = sub.add_parser("rm", help="the reward-model service").add_subparsers(dest="action", required=True)
    for action, text in (("serve", "run the reward-model REST gateway (embedded models unless CGPO_REDIS_URL)"),
                         ("worker", "serve the reward-model queue on CGPO_REDIS_URL")):
        p = rm.add_parser(action, help=text)
        p.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                       help="a reward model to serve (repeatable); default: CGPO_RM_MODELS")
        if action == "serve":
            _add_listen(p)
        else:
            _add_burst(p)
    rm_train = rm.add_parser("train", help="train a Bradley-Terry reward model on preference JSONL")

    train = sub.add_parser("train", help="train a policy with CGPO from a YAML run config")
    train.add_argument("config", help="YAML run config")
    train.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=1e-5 tasks.math.k=8")
    train.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    warm = sub.add_parser("warmup", help="DPO warm-up of a policy on preference JSONL (CGPO's starting point)")
    evaluate = sub.add_parser("eval", help="evaluate a checkpoint on the tasks' eval prompts")
    evaluate.add_argument("config")
    evaluate.add_argument("overrides", nargs="*")
    evaluate.add_argument("--checkpoint", default=None,
                          help="a checkpoint directory written by cgpo train (default: the config's initial "
                               "policy, for the numbers before training)")
    evaluate.add_argument("--no-kl", action="store_true",
                          help="skip the KL to the reference (two forward passes over every sample); reported as 0")

    demo = sub.add_parser("demo", help="train on a synthetic multi-task world: RM-only RLHF vs CGPO, with a report")
    demo.add_argument("--out", default="runs/demo", help="output directory (the world is cached in OUT/world)")
    demo.add_argument("--quick", action="store_true", help="the whole pipeline at toy size (no accuracy claims)")
    demo.add_argument("--jobs", type=int, default=None, help="runs trained in parallel (default: min(2, cores))")
    demo.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; --quick: 0)")
    demo.add_argument("--steps", type=int, default=None, help="training steps per run (default 40; --quick: 3)")

    model = sub.add_parser("model", help="model files").add_subparsers(dest="action", required=True)
    convert = model.add_parser("convert", help="make a loadable transformers directory from a GGUF file (cached) "
                                               "and print its path")
    convert.add_argument("model", help="a .gguf file, package:MODULE/FILE.gguf, or a model directory")
    convert.add_argument("--layers", type=int, default=None,
                         help="keep only the first N transformer layers (a smaller base); needs --out")
    convert.add_argument("--out", default=None, help="write here instead of the cache")

    ifeval = sub.add_parser("ifeval", help="instruction-following data of IFEval's kinds").add_subparsers(
        dest="action", required=True)
    gen = ifeval.add_parser("prompts", help="generate training prompts (1-3 IFEval instruction types each)")
    gen.add_argument("--out", required=True)
    gen.add_argument("-n", type=int, default=500, help="number of prompts")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--max-words", type=int, default=150, help="longest answer a length instruction may ask for")
    conv = ifeval.add_parser("convert", help="IFEval's input_data.jsonl as a prompt file (the evaluation set)")
    conv.add_argument("input")
    conv.add_argument("--responses", default=None, help="IFEval response JSONL whose responses become baselines")
    conv.add_argument("--out", required=True)
    pairs = ifeval.add_parser("pairs", help="reward-model pairs from K policy samples per prompt, ranked by the "
                                            "share of instructions followed")
    pairs.add_argument("--policy", required=True, help="the policy to sample (π_ref): directory or GGUF")
    pairs.add_argument("--prompts", required=True)
    pairs.add_argument("--out", required=True)
    pairs.add_argument("-k", type=int, default=4)
    pairs.add_argument("--temperature", type=float, default=0.7)
    pairs.add_argument("--max-new-tokens", type=int, default=160)
    pairs.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    pairs.add_argument("--seed", type=int, default=0)

    one = sub.add_parser("judge", help="judge one response and print the verdicts as JSON")
    one.add_argument("prompt")
    one.add_argument("response")
    one.add_argument("--judges", required=True, help="comma-separated judge names")
    one.add_argument("--metadata", default="{}", help="JSON object of metadata for the judges")
    one.add_argument("--url", default=None, help="a judges service to ask instead of judging in-process")
    one.add_argument("--api-key", default=os.environ.get("CGPO_API_KEY"))

    from cgpo.services.rm.train import add_arguments as add_train_arguments

    add_train_arguments(rm_train)
    from cgpo.trainer.warmup import add_arguments as add_warmup_arguments

    add_warmup_arguments(warm)
    return parser


def _dispatch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.command == "judges" and args.action == "serve":
        from cgpo.services.judges.app import build_app

        return _serve(build_app(), args.host, args.port)
    if args.command == "rm":
        return _rm(args, parser)
    if args.command == "warmup":
        from cgpo.trainer.warmup import run

        return run(args)
    if args.command in ("train", "eval"):
        return _train(args, parser)
    if args.command == "judges" and args.action == "worker":
        from cgpo.services.judges.worker import run_worker

        run_worker(burst=args.burst)
        return 0
    if args.command == "judges" and args.action == "demo":
        from cgpo.services.judges.demo import run_demo

        return run_demo()
    if args.command == "judge":
        return _judge_once(args, parser)
    if args.command == "model":
        return _model(args, parser)
    if args.command == "ifeval":
        return _ifeval(args, parser)
    if args.command == "demo":
        return _demo(args, parser)
    parser.error("unknown command")
    return 2


def _add_listen(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=os.environ.get("CGPO_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("CGPO_PORT", "8000")))


def _add_burst(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--burst", action="store_true", help="exit once the queue is empty")


def _serve(app: object, host: str, port: int) -> int:
    from cgpo.services.common.server import serve

    serve(app, host, port, log_level=os.environ.get("CGPO_LOG_LEVEL", "info"))
    return 0


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from pathlib import Path

    from cgpo.trainer.config import ConfigError, load_config

    try:
        config = load_config(args.config, args.overrides)
    except (ConfigError, OSError) as exc:
        parser.error(str(exc))
    if args.command == "train":
        from cgpo.trainer.loop import train

        train(config, resume=not args.no_resume)
        return 0
    from cgpo.trainer.loop import eval_checkpoint

    try:
        metrics = eval_checkpoint(config, Path(args.checkpoint) if args.checkpoint else None, kl=not args.no_kl)
    except ConfigError as exc:
        parser.error(str(exc))
    print(json.dumps(metrics, indent=2))
    return 0


def _demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        seeds = None if args.seeds is None else tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if seeds == () or (args.jobs is not None and args.jobs < 1) or (args.steps is not None and args.steps < 1):
        parser.error("--seeds needs at least one seed; --jobs and --steps must be >= 1")
    from cgpo.demo import run_demo

    run_demo(Path(args.out), quick=args.quick, jobs=args.jobs, seeds=seeds, steps=args.steps)
    return 0


def _rm(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.action == "train":
        from cgpo.services.rm.train import run

        return run(args)
    from cgpo.services.rm.config import RMConfig

    try:
        config = RMConfig.from_env(**({"models": tuple(args.model)} if args.model else {}))
    except ValueError as exc:
        parser.error(str(exc))
    if args.action == "serve":
        from cgpo.services.rm.app import build_app

        try:
            app = build_app(config=config)
        except ValueError as exc:
            parser.error(str(exc))
        return _serve(app, args.host, args.port)
    from cgpo.services.rm.worker import run_worker

    run_worker(config=config, burst=args.burst)
    return 0


def _model(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from cgpo.services.common.models import ModelPathError, convert_gguf, locate, resolve_model, truncate_layers

    try:
        if args.layers is not None:
            if not args.out:
                parser.error("--layers needs --out")
            print(truncate_layers(args.model, args.layers, Path(args.out)))
        elif args.out:
            gguf = locate(args.model)
            if gguf is None:
                parser.error(f"{args.model} is not a GGUF file: nothing to convert")
            print(convert_gguf(gguf, Path(args.out)))
        else:
            print(resolve_model(args.model))
    except ModelPathError as exc:
        parser.error(str(exc))
    return 0


def _ifeval(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from cgpo import instructions

    try:
        if args.action == "prompts":
            rows = instructions.generate_prompts(args.n, seed=args.seed, max_words=args.max_words)
        elif args.action == "convert":
            rows = instructions.convert_ifeval(args.input, args.responses)
        else:
            if args.k < 2:
                parser.error("-k must be >= 2 (pairs need two samples)")
            rows = instructions.sample_preference_pairs(
                args.policy, args.prompts, k=args.k, temperature=args.temperature,
                max_new_tokens=args.max_new_tokens, seed=args.seed, precision=args.precision,
                log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    print(f"wrote {instructions.write_jsonl(args.out, rows)} rows to {args.out}", file=sys.stderr)
    return 0


def _judge_once(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Exit status: 0 feasible, 1 a judge failed or errored, 2 bad input."""
    from cgpo.services.common.client import JudgesClient
    from cgpo.services.common.errors import ServiceError
    from cgpo.services.judges.config import JudgeConfig

    try:
        metadata = json.loads(args.metadata)
    except json.JSONDecodeError as exc:
        parser.error(f"--metadata is not valid JSON: {exc}")
    if not isinstance(metadata, dict):
        parser.error("--metadata must be a JSON object")
    names = tuple(dict.fromkeys(n.strip() for n in args.judges.split(",") if n.strip()))
    item = {"prompt": args.prompt, "response": args.response, "judges": list(names), "metadata": metadata}
    if args.url:
        client = JudgesClient(args.url, api_key=args.api_key)
    else:
        try:  # build only the judges asked for
            client = JudgesClient.embedded(JudgeConfig.from_env(enabled=names))
        except ValueError as exc:
            parser.error(str(exc))

    async def run() -> int:
        async with client:
            try:
                [result] = await client.judge([item])
            except ServiceError as exc:
                print(json.dumps({"error": {"code": exc.code, "message": exc.message, "detail": exc.detail}}),
                      file=sys.stderr)
                return 2
        print(json.dumps(result.model_dump(mode="json"), indent=2))
        return 0 if result.feasible else 1

    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
