"""The ``cgpo`` command. Subcommands import their heavy parts only when run."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

# Help of the flags of the preference-pair trainers, `cgpo rm train` and `cgpo warmup`, by field name.
# Their defaults are not repeated here: each flag's default is its config dataclass's own.
_PAIR_FLAG_HELP = {
    "base": "local causal-LM or reward-model checkpoint to start from",
    "policy": "starting policy (local path); also the frozen reference",
    "data": "preference JSONL: prompt, chosen, rejected per line",
    "out": "output directory (the trained model and its report)",
    "epochs": "passes over the training pairs",
    "lr": "AdamW learning rate",
    "beta": "DPO's β (the KL weight)",
    "batch_size": "pairs per optimizer step",
    "max_length": "tokens per (prompt, response); serve with the same value",
    "eval_fraction": "share of pairs held out for evaluation (0 = none)",
    "warmup_ratio": "share of steps of linear warmup",
    "weight_decay": "AdamW weight decay on matrices",
    "max_grad_norm": "global gradient-norm clip",
    "seed": "seed for the split, shuffling and initialisation",
    "device": "cpu, cuda, cuda:N or mps (default: cuda when available)",
}


def die(message: str) -> NoReturn:
    """Every command fails the same way, whatever went wrong: ``error: message`` on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return _dispatch(args)


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
    plan = sub.add_parser("plan", help="the GPU memory a run config needs per GPU: exit 0 if it fits, 1 if not")
    plan.add_argument("config", help="YAML run config")
    plan.add_argument("overrides", nargs="*", help="key=value overrides, e.g. precision=bf16 optim.micro_batch_size=4")
    plan.add_argument("--gpus", type=int, required=True, help="GPUs the run trains on")
    plan.add_argument("--gpu-memory", type=float, required=True, metavar="GB", help="memory of one GPU (10^9 bytes)")
    plan.add_argument("--parallel", choices=("ddp", "fsdp"), default=None, help="default: the config's parallel")
    plan.add_argument("--lora-r", type=int, default=None, metavar="R", help="train LoRA adapters of rank R")
    plan.add_argument("--lora-targets", default=None,
                      help="comma-separated linears LoRA adapts (default: every attention and MLP projection)")
    plan.add_argument("--activation-checkpointing", action="store_true",
                      help="recompute each layer in the backward (default: the config's activation_checkpointing)")
    plan.add_argument("--model-config", default=None, metavar="PATH_OR_NAME",
                      help="a config.json, a model directory or a built-in architecture (smollm2-135m, llama-3.2-1b, "
                           "llama-3.2-3b, llama-3.1-8b, llama-3.1-70b); default: the config's policy")
    plan.add_argument("--prompt-tokens", type=int, default=512, help="longest prompt, in tokens (default: 512)")
    plan.add_argument("--row", action="store_true", help="print one markdown table row, to compare plans")
    plan.add_argument("--no-header", action="store_true", help="with --row: the row alone")
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

    export = sub.add_parser("export", help="a training checkpoint (sharded or not) as a plain transformers "
                                           "directory that transformers and vLLM load")
    export.add_argument("checkpoint", help="OUTPUT_DIR/checkpoint of a run")
    export.add_argument("--out", required=True, help="directory to write")
    export.add_argument("--merge", action="store_true",
                        help="LoRA checkpoints: write the base model with the adapters merged in (default: the "
                             "adapters as a peft adapter directory)")

    model = sub.add_parser("model", help="model files").add_subparsers(dest="action", required=True)
    convert = model.add_parser("convert", help="make a loadable transformers directory from a GGUF file (cached) "
                                               "and print its path")
    convert.add_argument("model", help="a .gguf file, package:MODULE/FILE.gguf, or a model directory")
    convert.add_argument("--layers", type=int, default=None,
                         help="keep only the first N transformer layers (a smaller base); needs --out")
    convert.add_argument("--out", default=None, help="write here instead of the cache")

    data = sub.add_parser("data", help="datasets as prompt files and preference pairs").add_subparsers(
        dest="action", required=True)
    imp = data.add_parser("import", help="a published dataset (JSONL, JSON or Parquet) as a prompt file or as "
                                         "preference pairs (cgpo/importers.py)")
    imp.add_argument("format", help="gsm8k, math, humaneval, mbpp, ifeval, messages, trl (prompt files); "
                                    "hh-rlhf, ultrafeedback (preference pairs)")
    imp.add_argument("source", help="the dataset file: .jsonl, .json or .parquet")
    imp.add_argument("--out", required=True, help="the JSONL file to write")
    imp.add_argument("--metadata", action="append", default=[], metavar="KEY=COLUMN",
                     help="copy COLUMN of each row into metadata KEY (repeatable; prompt formats)")
    imp.add_argument("--limit", type=int, default=None, help="write at most N records")

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
    one.add_argument("--api-key", default=None, help="bearer token for --url (default: CGPO_API_KEY)")

    from cgpo.services.rm.train import TrainConfig
    from cgpo.trainer.warmup import WarmupConfig

    _add_config_flags(rm_train, TrainConfig)
    _add_config_flags(warm, WarmupConfig)
    return parser


def _add_config_flags(parser: argparse.ArgumentParser, config: type) -> None:
    """A flag per field of the dataclass ``config``, defaulting to the field's default (required when it
    has none), so that each default is defined once, where the config is."""
    for field in dataclasses.fields(config):
        flag, text = "--" + field.name.replace("_", "-"), _PAIR_FLAG_HELP[field.name]
        if field.default is dataclasses.MISSING:
            parser.add_argument(flag, dest=field.name, required=True, help=text)
        elif field.default is None:
            parser.add_argument(flag, dest=field.name, default=None, help=text)
        else:
            parser.add_argument(flag, dest=field.name, type=type(field.default), default=field.default,
                                help=f"{text} (default: {field.default})")


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "judges":
        return _judges(args)
    if args.command == "rm":
        return _rm(args)
    if args.command == "warmup":
        from cgpo.trainer.warmup import run

        return _reporting(run, args)
    if args.command in ("train", "eval"):
        return _train(args)
    if args.command == "judge":
        return _judge_once(args)
    if args.command == "model":
        return _model(args)
    if args.command == "ifeval":
        return _ifeval(args)
    if args.command == "data":
        return _data_import(args)
    if args.command == "plan":
        return _plan(args)
    if args.command == "export":
        return _export(args)
    if args.command == "demo":
        return _demo(args)
    die(f"unknown command {args.command!r}")


def _data_import(args: argparse.Namespace) -> int:
    from cgpo.importers import import_file

    columns = {}
    for item in args.metadata:
        key, sep, column = item.partition("=")
        if not sep or not key or not column:
            die(f"--metadata {item!r} must be KEY=COLUMN")
        columns[key] = column
    try:
        written, skipped = import_file(args.format, args.source, args.out, columns, args.limit)
    except (ValueError, OSError) as exc:
        die(str(exc))
    print(f"wrote {written} records to {args.out}" + (f"; skipped {len(skipped)} rows" if skipped else ""))
    for reason in skipped[:10]:
        print(f"  skipped {reason}", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace) -> int:
    from cgpo.trainer.checkpoint import export

    try:
        print(export(Path(args.checkpoint), Path(args.out), merge=args.merge))
    except (ValueError, OSError) as exc:
        die(str(exc))
    return 0


def _reporting(run: Any, args: argparse.Namespace) -> int:
    """``run(args)``, with a bad file or value that escapes it reported as every other failure is."""
    try:
        return run(args)
    except (ValueError, OSError) as exc:
        die(str(exc))


def _settings(cls: Any, **overrides: Any) -> Any:
    """``cls.from_env(**overrides)`` (a settings class), invalid variables reported by name."""
    try:
        return cls.from_env(**overrides)
    except ValueError as exc:
        die(str(exc))


def _worker_settings(command: str) -> Any:
    """The service settings of a worker, which has nothing to do without a queue."""
    from cgpo.services.common.settings import ServiceSettings

    settings = _settings(ServiceSettings)
    if not settings.redis_url:
        die(f"{command} needs CGPO_REDIS_URL (the queue to serve)")
    return settings


def _add_listen(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default=None, help="address to listen on (default: CGPO_HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port to listen on (default: CGPO_PORT, else 8000)")


def _add_burst(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--burst", action="store_true", help="exit once the queue is empty")


def _serve(app: object, args: argparse.Namespace) -> int:
    """Run a gateway where ``--host``/``--port`` say, else where the settings do."""
    from cgpo.services.common.server import serve
    from cgpo.services.common.settings import ServerSettings

    given = {name: getattr(args, name) for name in ("host", "port") if getattr(args, name) is not None}
    settings = _settings(ServerSettings, **given)
    serve(app, settings.host, settings.port, log_level=settings.log_level)
    return 0


def _judges(args: argparse.Namespace) -> int:
    from cgpo.services.common.settings import ServiceSettings
    from cgpo.services.judges.config import JudgeConfig

    if args.action == "demo":
        from cgpo.services.judges.demo import run_demo

        return run_demo()
    if args.action == "worker":
        from cgpo.services.judges.worker import run_worker

        settings = _worker_settings("cgpo judges worker")
        run_worker(settings, _settings(JudgeConfig), burst=args.burst)
        return 0
    from cgpo.services.judges.app import build_app

    settings, config = _settings(ServiceSettings), _settings(JudgeConfig)
    try:
        app = build_app(settings, config)
    except ValueError as exc:
        die(str(exc))
    return _serve(app, args)


def _train(args: argparse.Namespace) -> int:
    """``cgpo train`` and ``cgpo eval``: a bad config, prompt file or model path, or a service that stays
    unavailable, ends the command with its message."""
    from cgpo.modelfiles import ModelPathError
    from cgpo.services.common.errors import ServiceError
    from cgpo.trainer.config import ConfigError, load_config
    from cgpo.trainer.data import PromptFileError
    from cgpo.trainer.scoring import ScoringError

    try:
        config = load_config(args.config, args.overrides)
        if args.command == "train":
            from cgpo.trainer.loop import train

            train(config, resume=not args.no_resume)
            return 0
        from cgpo.trainer.loop import eval_checkpoint

        metrics = eval_checkpoint(config, Path(args.checkpoint) if args.checkpoint else None, kl=not args.no_kl)
    except (ConfigError, PromptFileError, ModelPathError, ScoringError, ServiceError, OSError) as exc:
        die(str(exc))
    print(json.dumps(metrics, indent=2))
    return 0


def _plan(args: argparse.Namespace) -> int:
    """``cgpo plan``: the memory plan of a run config (trainer/plan.py); exit status 1 when it does not fit."""
    from cgpo.modelfiles import ModelPathError
    from cgpo.trainer import plan
    from cgpo.trainer.config import ConfigError, load_config

    targets = plan.LORA_TARGETS if args.lora_targets is None else tuple(
        t.strip() for t in args.lora_targets.split(",") if t.strip())
    try:
        config = load_config(args.config, args.overrides)
        setup = plan.Setup.from_run(config, gpus=args.gpus, gpu_memory=args.gpu_memory, parallel=args.parallel,
                                    checkpointing=args.activation_checkpointing or config.activation_checkpointing,
                                    prompt_tokens=args.prompt_tokens,
                                    lora_r=args.lora_r, lora_targets=targets)
        result = plan.plan(plan.architecture(args.model_config, config.policy), setup)
    except (ConfigError, ModelPathError, plan.PlanError, OSError) as exc:
        die(str(exc))
    print(plan.format_row(result, header=not args.no_header) if args.row else plan.format_table(result))
    return 0 if result.fits else 1


def _demo(args: argparse.Namespace) -> int:
    try:
        seeds = None if args.seeds is None else tuple(int(s) for s in args.seeds.split(",") if s.strip())
    except ValueError:
        die(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if seeds == () or (args.jobs is not None and args.jobs < 1) or (args.steps is not None and args.steps < 1):
        die("--seeds needs at least one seed; --jobs and --steps must be >= 1")
    from cgpo.demo import run_demo

    run_demo(Path(args.out), quick=args.quick, jobs=args.jobs, seeds=seeds, steps=args.steps)
    return 0


def _rm(args: argparse.Namespace) -> int:
    if args.action == "train":
        from cgpo.services.rm.train import run

        return _reporting(run, args)
    from cgpo.services.common.settings import ServiceSettings
    from cgpo.services.rm.config import RMConfig

    config = _settings(RMConfig, **({"models": tuple(args.model)} if args.model else {}))
    if args.action == "serve":
        from cgpo.services.rm.app import build_app

        try:
            app = build_app(_settings(ServiceSettings), config)
        except ValueError as exc:
            die(str(exc))
        return _serve(app, args)
    from cgpo.services.rm.worker import run_worker

    settings = _worker_settings("cgpo rm worker")
    if not config.models:
        die("cgpo rm worker needs --model NAME=PATH (or CGPO_RM_MODELS)")
    run_worker(settings, config, burst=args.burst)
    return 0


def _model(args: argparse.Namespace) -> int:
    from cgpo.modelfiles import ModelPathError, convert_gguf, locate, resolve_model, truncate_layers

    if args.layers is not None and not args.out:
        die("--layers needs --out")
    try:
        if args.layers is not None:
            print(truncate_layers(args.model, args.layers, Path(args.out)))
        elif args.out:
            gguf = locate(args.model)
            if gguf is None:
                die(f"{args.model} is not a GGUF file: nothing to convert")
            print(convert_gguf(gguf, Path(args.out)))
        else:
            print(resolve_model(args.model))
    except ModelPathError as exc:
        die(str(exc))
    return 0


def _ifeval(args: argparse.Namespace) -> int:
    from cgpo import instructions

    try:
        if args.action == "prompts":
            rows = instructions.generate_prompts(args.n, seed=args.seed, max_words=args.max_words)
        elif args.action == "convert":
            rows = instructions.convert_ifeval(args.input, args.responses)
        else:
            if args.k < 2:
                die("-k must be >= 2 (pairs need two samples)")
            rows = instructions.sample_preference_pairs(
                args.policy, args.prompts, k=args.k, temperature=args.temperature,
                max_new_tokens=args.max_new_tokens, seed=args.seed, precision=args.precision,
                log=lambda msg: print(msg, file=sys.stderr, flush=True))
    except (ValueError, OSError) as exc:
        die(str(exc))
    print(f"wrote {instructions.write_jsonl(args.out, rows)} rows to {args.out}", file=sys.stderr)
    return 0


def _judge_once(args: argparse.Namespace) -> int:
    """Exit status: 0 feasible, 1 a judge failed or errored, 2 bad input or a service error."""
    from cgpo.services.common.client import JudgesClient
    from cgpo.services.common.errors import ServiceError
    from cgpo.services.common.settings import ClientSettings
    from cgpo.services.judges.config import JudgeConfig
    from cgpo.services.judges.embedded import embedded_judges

    try:
        metadata = json.loads(args.metadata)
    except json.JSONDecodeError as exc:
        die(f"--metadata is not valid JSON: {exc}")
    if not isinstance(metadata, dict):
        die("--metadata must be a JSON object")
    names = tuple(dict.fromkeys(n.strip() for n in args.judges.split(",") if n.strip()))
    item = {"prompt": args.prompt, "response": args.response, "judges": list(names), "metadata": metadata}
    if args.url:
        client = JudgesClient(args.url, api_key=args.api_key or _settings(ClientSettings).api_key)
    else:
        config = _settings(JudgeConfig, enabled=names)  # build only the judges asked for
        try:
            client = embedded_judges(config)
        except ValueError as exc:
            die(str(exc))

    async def judge() -> Any:
        async with client:
            return await client.judge([item])

    try:
        [result] = asyncio.run(judge())
    except ServiceError as exc:
        die(f"{exc.code}: {exc.message}" + ("" if exc.detail is None else f" ({json.dumps(exc.detail)})"))
    print(json.dumps(result.model_dump(mode="json"), indent=2))
    return 0 if result.feasible else 1


if __name__ == "__main__":
    sys.exit(main())
