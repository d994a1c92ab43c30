"""`python -m engine train`: fine-tune a model in a run folder, streaming events."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from pathlib import Path

from engine.config import RunConfig, cli_options, field_help
from engine.training.stop import StopSignal


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="Fine-tune a model (LoRA, DoRA, QLoRA or full) on a dataset.",
        description="Fine-tune a model on a dataset. Reads Lathe configs and the YAML files "
        "`mlx_lm.lora -c` reads; flags override the config file.",
    )
    p.add_argument(
        "--config", "-c", metavar="FILE", help="YAML config (Lathe or mlx_lm.lora format)."
    )
    for opt in cli_options():
        p.add_argument(
            opt.flag, type=opt.type, default=None, choices=opt.choices, help=opt.help or None
        )
    p.add_argument(
        "--mask-prompt",
        dest="mask_prompt",
        action="store_true",
        default=None,
        help=field_help("data", "mask_prompt"),
    )
    p.add_argument(
        "--no-mask-prompt",
        dest="mask_prompt",
        action="store_false",
        help="Train on the whole text, prompts included.",
    )
    p.add_argument(
        "--grad-checkpoint",
        action="store_true",
        default=None,
        help=field_help("training", "grad_checkpoint"),
    )
    p.add_argument("--test", action="store_true", default=None, help=field_help("training", "test"))
    p.add_argument(
        "--nan-retry", action="store_true", default=None, help=field_help("training", "nan_retry")
    )
    p.add_argument(
        "--force",
        action="store_true",
        default=None,
        help=field_help("training", "ignore_fit_check")
        + " Also starts when the chat template drops every example's tool calls.",
    )
    p.add_argument("--name", help="A name for the run (used in its folder name).")
    p.add_argument(
        "--resume", metavar="RUN", help="Continue a run (id or folder) from its newest checkpoint."
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="Fine-tune a demo model on the bundled bank-support sample, no other arguments needed.",
    )
    p.add_argument(
        "--events",
        action="store_true",
        help="Write events as JSON lines to stdout (for the app); `stop` on stdin stops the run.",
    )
    p.add_argument(
        "--write-mlx-lm-config",
        metavar="FILE",
        help="Write the resolved config as an `mlx_lm.lora -c` YAML file and exit.",
    )
    p.add_argument(
        "--print-config", action="store_true", help="Print the resolved config and exit."
    )
    p.add_argument(
        "--hosts",
        metavar="FILE",
        help="Train data-parallel across the Macs listed in this YAML file (ssh, same Python "
        "path on each), through mlx.launch; rank 0's events come back here.",
    )
    p.add_argument(
        "--backend",
        default="ring",
        choices=("ring", "mpi"),
        help="mlx.launch backend for --hosts (ring: Ethernet or Thunderbolt).",
    )
    p.set_defaults(handler=handle)


def build_config(args: argparse.Namespace, warnings: list[str]) -> RunConfig:
    cfg = RunConfig.load(args.config, warnings) if args.config else RunConfig()
    if args.config:
        # Paths in a config file are relative to the file (a run bundle can be copied anywhere).
        base = Path(args.config).resolve().parent
        for section, name in (("model", "path"), ("data", "path")):
            value = getattr(getattr(cfg, section), name)
            if value and not Path(value).expanduser().is_absolute() and (base / value).exists():
                setattr(getattr(cfg, section), name, str(base / value))
    if args.demo:
        from engine.demo import demo_defaults

        demo_defaults(cfg, warnings)
    for opt in cli_options():
        value = getattr(args, opt.flag.lstrip("-").replace("-", "_"))
        if value is not None:
            setattr(getattr(cfg, opt.section), opt.name, value)
    if args.iters is not None:
        cfg.training.iters = args.iters
    if args.epochs is not None and args.iters is None:
        cfg.training.iters = None
    if args.mask_prompt is not None:
        cfg.data.mask_prompt = args.mask_prompt
    if args.grad_checkpoint:
        cfg.training.grad_checkpoint = True
    if args.test:
        cfg.training.test = True
    if args.nan_retry:
        cfg.training.nan_retry = True
    if args.force:
        cfg.training.ignore_fit_check = True
        cfg.data.allow_template_drops = True
    if args.name:
        cfg.name = args.name
    return cfg


def mlx_lm_job(config: RunConfig) -> tuple[dict, list[str]]:
    """The run as a flat `mlx_lm.lora -c` config describing the same job, and notes on anything
    mlx_lm.lora would do differently.

    `iters` comes from the epochs and the batch plan of the real data (its training examples,
    encoded with the model's tokenizer), times gradient accumulation (mlx_lm counts batches, Lathe
    optimizer steps); `data` is the dataset's folder (mlx_lm.lora reads train.jsonl and
    valid.jsonl there; it cannot resolve a Lathe dataset id or name); `model` the model's folder.
    """
    import math

    from engine.batching import choose_batching, plan_epoch_budget
    from engine.data import dataset_dir, load_splits
    from engine.data.pipeline import record_kind
    from engine.errors import LatheError
    from engine.models.info import read_config
    from engine.models.loading import resolve_model
    from engine.training.memory import train_lengths
    from engine.training.schedule import eval_interval, total_steps

    config.validate()
    t, d = config.training, config.data
    notes: list[str] = []
    try:
        model_dir = resolve_model(config.model.path)
    except LatheError:
        if not t.iters:
            raise  # the steps follow from the data encoded with this model's tokenizer
        model_dir = None
        notes.append(
            f"{config.model.path} is not on this Mac; it is written as given (mlx_lm.lora "
            "downloads a Hub id)."
        )
    given = Path(d.path).expanduser()
    folder = given.resolve() if (given / "train.jsonl").is_file() else dataset_dir(d.path)
    if folder is None:
        notes.append(
            f"mlx_lm.lora reads a folder with train.jsonl and valid.jsonl, and {d.path} is not "
            "one: import it (`data import`) and use the dataset's folder."
        )
    elif not (folder / "valid.jsonl").is_file() or not (folder / "valid.jsonl").stat().st_size:
        notes.append(
            f"{folder} has no valid.jsonl: Lathe holds out {d.valid_fraction:.0%} of train for "
            "validation, mlx_lm.lora needs the file."
        )
    job = config.to_mlx_lm_dict()
    accum = t.grad_accumulation_steps
    if t.iters:
        steps = t.iters  # given: no need to read the data
    else:
        lengths = train_lengths(config, model_dir)
        model_type = read_config(model_dir).get("model_type")
        mode, size, _ = choose_batching(lengths, t.batch_size, d.packing, model_type, d.pack_length)
        if mode == "budget":
            batches = len(plan_epoch_budget(lengths, size, t.seed, 0, t.pad_multiple))
            notes.append(
                "This run uses budget batching (several short examples per step), which "
                "mlx_lm.lora does not have: it runs the same number of steps with batch_size "
                "examples each."
            )
        else:
            batches = math.ceil(len(lengths) / t.batch_size)
            if mode == "pack":
                notes.append(
                    "mlx_lm.lora does not pack rows; it runs batch_size examples per step."
                )
        steps = total_steps(config, len(lengths), batches)
    if model_dir is not None:
        model_config = read_config(model_dir)
        layers = int(model_config.get("num_hidden_layers") or model_config.get("n_layer") or 0)
        if layers and job["num_layers"] > layers:
            # Lathe trains every layer then; mlx_lm.lora refuses more layers than there are.
            job["num_layers"] = -1
        job["model"] = str(model_dir)
    job["data"] = str(folder) if folder is not None else d.path
    job["iters"] = steps * accum
    job["steps_per_eval"] = eval_interval(config, steps) * accum
    job["steps_per_report"] = t.steps_per_report * accum
    job["save_every"] = t.save_every * accum
    try:
        sample = load_splits(d.path, valid_fraction=d.valid_fraction, seed=t.seed).train[:50]
    except LatheError:
        sample = []
    if d.mask_prompt and sample and all(record_kind(r) == "text" for r in sample):
        job["mask_prompt"] = False  # plain text has no prompt to mask (mlx_lm.lora refuses it)
    return job, notes


def handle(args: argparse.Namespace) -> int:
    from engine import cli
    from engine.platform import reexec_with_cpu_env

    if cli.FROM_COMMAND_LINE and not (args.write_mlx_lm_config or args.print_config):
        # Training never downloads (models come from the library or the HF cache), so this process
        # tells huggingface_hub to stay offline; set before the re-exec so the new process has it.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        reexec_with_cpu_env(sys.argv[1:])
    if not (args.write_mlx_lm_config or args.print_config):
        # On MLX's CPU backend, batches run in two groups on two streams; MLX interleaves them
        # only with this evaluation order, which it reads at its first evaluation
        # (engine.training.parts). Set here, before the ranks split: every rank of a distributed
        # run must order its work, and so its gradient sums across ranks, the same way.
        from engine.training.parts import set_eval_order

        set_eval_order()

    from engine import events
    from engine.cli import UserError
    from engine.runs import LOCK_FILE, claim, create_run, find_run, load_run, release
    from engine.training import distributed
    from engine.workspace import FileLock, write_yaml_atomic

    if args.hosts and not distributed.launched():
        return _launch_on_hosts(args)
    ranks = distributed.world()
    if ranks.size > 1 and not ranks.is_main:
        return _secondary_rank(args, ranks)

    warnings: list[str] = []
    resume = bool(args.resume)
    if resume:
        run_dir = find_run(args.resume)
        info = load_run(run_dir)
        if info.state == "running":
            raise UserError(
                f"Run {info.id} is already training in process "
                f"{FileLock(run_dir / LOCK_FILE).holder() or info.status.get('pid')}."
            )
        if info.state == "completed":
            raise UserError(f"Run {info.id} already completed; start a new run to train more.")
        claim(run_dir)  # held until this worker ends; a second worker is refused from here on
        config = info.config
        if args.force:
            config.training.ignore_fit_check = True
            config.data.allow_template_drops = True
    else:
        config = build_config(args, warnings)
        if args.write_mlx_lm_config:
            job, notes = mlx_lm_job(config)
            write_yaml_atomic(Path(args.write_mlx_lm_config), job)
            print(
                f"Wrote {args.write_mlx_lm_config} (for `mlx_lm.lora -c`): {job['iters']} "
                f"iterations of {job['batch_size']} examples on {job['data']}."
            )
            for note in notes:
                print(f"note: {note}", file=sys.stderr)
            return 0
        if args.print_config:
            print(config.to_yaml(), end="")
            return 0
        config.validate()
        run_dir = _run_folder_for(args.config, config, create_run)

    stop = StopSignal()
    stop.install(watch_stdin=args.events)
    sinks = [events.EventLog(run_dir / "events.jsonl")]
    sinks.append(
        events.JsonLinesWriter(sys.stdout) if args.events else events.ConsolePrinter(sys.stderr)
    )
    sink = events.Fanout(sinks)
    for w in warnings:
        sink(
            events.make(
                "log", level="warning" if "ignored" in w or "not" in w else "info", message=w
            )
        )

    from engine.train import run

    try:
        status = run(config, run_dir, sink, should_stop=stop, resume=resume)
    finally:
        release(run_dir)
    sinks[0].close()
    if not args.events and status == "completed":
        print(f"Adapter: {run_dir / 'adapters'}", file=sys.stderr)
    return {"completed": 0, "stopped": 0}.get(status, 1)


def _run_folder_for(config_path: str | None, config: RunConfig, create_run) -> Path:
    """The run folder the config already lives in (the app creates it), else a new one; either way
    claimed (locked) for this worker. A second worker on the same created run is refused here."""
    from engine.runs import claim, release
    from engine.workspace import read_json, write_text_atomic

    if config_path and Path(config_path).name == "config.yaml":
        folder = Path(config_path).resolve().parent
        if (folder / "status.json").is_file():
            claim(folder)  # before reading the state: two workers started together race here
            status = read_json(folder / "status.json", {}) or {}
            if status.get("state") == "created":
                write_text_atomic(folder / "config.yaml", config.to_yaml())
                return folder
            release(folder)
    folder = create_run(config)
    claim(folder)
    return folder


def _secondary_rank(args: argparse.Namespace, ranks) -> int:
    """Ranks other than 0 train in a private scratch folder, deleted at the end, and print nothing:
    only rank 0 writes the run folder and events."""
    import shutil

    from engine.runs import find_run, load_run
    from engine.train import run
    from engine.training import checkpoint as ckpt
    from engine.workspace import scratch as scratch_dir

    with scratch_dir(f"rank{ranks.rank}") as scratch:
        if args.resume:
            source = find_run(args.resume)
            config = load_run(source).config
            latest = ckpt.latest_checkpoint(source)
            if latest is not None:
                shutil.copytree(latest, scratch / "checkpoints" / latest.name)
        else:
            config = build_config(args, [])
        stop = StopSignal()
        stop.install(watch_stdin=False)
        status = run(
            config, scratch, lambda event: None, should_stop=stop, resume=bool(args.resume)
        )
        return {"completed": 0, "stopped": 0}.get(status, 1)


def _launch_on_hosts(args: argparse.Namespace) -> int:
    """Start this same command on every listed Mac with mlx.launch and relay rank 0's events."""
    from engine.training import distributed
    from engine.workspace import scratch

    hosts = distributed.read_hosts(args.hosts)
    with scratch("hosts") as folder:  # in the workspace, removed when the launch ends
        hostfile = distributed.write_hostfile(hosts, folder / "hosts.json")
        return _relay_launch(args, hostfile, len(hosts))


def _relay_launch(args: argparse.Namespace, hostfile: Path, n_hosts: int) -> int:
    import json
    import signal as sig
    import subprocess

    from engine import events
    from engine.training import distributed

    argv = list(sys.argv[1:])
    i = argv.index("--hosts")
    train_args = (
        argv[argv.index("train") + 1 : i] + argv[i + 2 :]
        if "train" in argv
        else argv[:i] + argv[i + 2 :]
    )
    cmd = distributed.launch_command(hostfile, train_args, args.backend)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
    stop = StopSignal()
    stop.install(watch_stdin=args.events)
    threading.Thread(
        target=lambda: (stop.event.wait(), proc.poll() is None and proc.send_signal(sig.SIGTERM)),
        daemon=True,
    ).start()
    printer = None if args.events else events.ConsolePrinter(sys.stderr)
    status = None
    for line in proc.stdout:
        if line.startswith("{"):
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            status = event.get("status", status) if event.get("event") == "finished" else status
            if printer:
                printer(event)
            else:
                sys.stdout.write(line)
                sys.stdout.flush()
        else:
            sys.stderr.write(line)
    proc.wait()
    if status is None:
        print(
            f"lathe-engine: the run across {n_hosts} Macs ended without a result (mlx.launch exit "
            f"code {proc.returncode}); see the messages above.",
            file=sys.stderr,
        )
        return 1
    return {"completed": 0, "stopped": 0}.get(status, 1)
