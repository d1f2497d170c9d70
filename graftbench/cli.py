"""The ``graftbench`` command: parse, call, print. The work happens in the modules it calls.

Startup stays light (no torch) until a command needs it: shell completion runs this module on
every Tab, and ``--version`` and ``list`` should answer at once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from omegaconf import OmegaConf

from graftbench.errors import UserError

# Two or three real examples per command (the help's epilog; tests/test_cli.py runs each).
EXAMPLES: dict[str, list[tuple[str, str]]] = {
    "train": [
        (
            "Adam's step size with SGD's direction, on the demo workload (digits, CPU)",
            "graftbench train experiment=demo magnitude=adam direction=sgd",
        ),
        (
            "the resolved config and run directory of plain AdaGrad; nothing is trained",
            "graftbench train experiment=demo magnitude=adagrad trainer.epochs=3 --dry-run",
        ),
        (
            "the paper's ResNet-50 recipe on 8 GPUs",
            "graftbench train experiment=paper_imagenet magnitude=adam direction=sgd "
            "data.root=/data/imagenet trainer.devices=8",
        ),
    ],
    "sweep": [
        ("the demo: every pair of SGD, Adam and AdaGrad", "graftbench sweep experiment=demo"),
        (
            "three seeds of the demo grid, listed (27 runs); nothing is launched",
            "graftbench sweep experiment=demo seed=0,1,2 --dry-run --list",
        ),
        (
            "the paper's ImageNet grid as one SLURM job array",
            "graftbench sweep experiment=paper_imagenet data.root=/data/imagenet "
            "launcher=slurm launcher.partition=gpu",
        ),
    ],
    "status": [
        ("every run of the demo sweep", "graftbench status results/demo"),
        (
            "redraw in place every 30 s until every run ends",
            "graftbench status results/demo --watch --interval 30",
        ),
        ("failed runs' messages in full", "graftbench status results/demo --verbose"),
    ],
    "table": [
        ("top-1 and top-5, M in rows, D in columns", "graftbench table results/demo"),
        (
            "top-1 as a LaTeX table, for a paper",
            "graftbench table results/demo --metric top1 --format latex --out top1.tex",
        ),
        (
            "beside reference numbers in the same M x D layout",
            "graftbench table results/demo --metric top1 --compare reference.csv",
        ),
    ],
    "plot": [
        ("Figure 1 of the paper for the demo", "graftbench plot results/demo"),
        (
            "top-1 curves only, into ./figures",
            "graftbench plot results/demo --metric top1 --out figures",
        ),
    ],
    "transfer": [
        (
            "one multiplier per layer (the median of c), written next to the run",
            "graftbench transfer results/demo/adagrad+sgd-s0-1a2b3c4d",
        ),
        (
            "a piecewise-linear correction over training, written here",
            "graftbench transfer results/demo/adagrad+sgd-s0-1a2b3c4d --kind piecewise "
            "--out adagrad-sgd.json",
        ),
        (
            "SGD alone with that schedule",
            "graftbench train magnitude=sgd schedule=transferred schedule.source=adagrad-sgd.json",
        ),
    ],
    "sync": [
        ("the `wandb sync` command, not run", "graftbench sync results/demo --dry-run"),
        ("upload the demo's offline W&B runs", "graftbench sync results/demo"),
    ],
    "list": [
        ("every choice of every config group", "graftbench list"),
        ("each optimizer's hyperparameters and defaults", "graftbench list optimizers"),
        ("the recipes: experiment=<name>", "graftbench list experiments"),
    ],
}


def _examples(command: str) -> str:
    lines = ["Examples:"]
    for what, line in EXAMPLES[command]:
        lines += ["", f"  # {what}", f"  {line}"]
    return "\n".join(lines)


class _FlagsAsFlags:
    """Show a boolean option as a flag (``--dry-run``), not with a ``<bool>`` value."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class _Group(_FlagsAsFlags, typer.core.TyperGroup):
    pass


class _Command(_FlagsAsFlags, typer.core.TyperCommand):
    pass


app = typer.Typer(
    cls=_Group,
    help="Run the learning-rate grafting grid: M's step magnitude with D's step direction.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if not value:
        return
    from importlib import metadata

    from graftbench.provenance import git

    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "not installed"

    typer.echo(f"graftbench {version('graftbench')}")
    typer.echo(f"torch {version('torch')}")
    commit = git()
    if commit["sha"]:
        typer.echo(f"git {commit['sha']}{' (uncommitted changes)' if commit['dirty'] else ''}")
    raise typer.Exit()


@app.callback()
def _commands(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_version,
            is_eager=True,
            help="The package and torch versions, and the git commit of a checkout.",
        ),
    ] = False,
) -> None:
    """Run the learning-rate grafting grid: M's step magnitude with D's step direction."""


def _complete_override(ctx: typer.Context, incomplete: str) -> list[tuple[str, str]]:
    """Shell completion of ``key=value``: group choices (``magnitude=adam``, ``model=``,
    ``experiment=``, ...) and the top-level keys (``seed=``, ``trainer.epochs=``). Bash splits
    words at ``=``, so ``magnitude=ad`` may arrive as ``magnitude``, ``=``, ``ad``."""
    from graftbench import catalog

    before = [str(a) for a in ctx.params.get("overrides") or []]
    words, current = os.environ.get("COMP_WORDS", "").split(), os.environ.get("COMP_CWORD", "")
    if current.isdigit() and int(current) < len(words) and words[int(current)] == "=":
        incomplete = "="  # bash, right after `key=` (the completion hands over "")
    return catalog.complete(before, incomplete)


Overrides = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="KEY=VALUE",
        help="Hydra overrides, e.g. magnitude=adam direction=sgd trainer.epochs=3 "
        "(`graftbench list` shows the choices)",
        autocompletion=_complete_override,
        show_default=False,
    ),
]


@app.command(epilog=_examples("train"))
def train(
    overrides: Overrides = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(
            "--run-dir",
            help="Run (or resume) a prepared run directory; overrides may then only say where "
            "and how it runs (data.root=..., trainer.devices=..., logger=wandb).",
        ),
    ] = None,
    execution: Annotated[
        str | None,
        typer.Option("--execution", hidden=True, help="Execution settings as JSON (launchers)."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the resolved config; train nothing.")
    ] = False,
) -> None:
    """Train one run in the foreground (resuming it if it has a checkpoint)."""
    if run_dir is not None and _finished(run_dir):  # before the heavy imports: launchers
        typer.echo(f"{run_dir}: already finished, nothing to do")  # start many such workers
        return
    from graftbench import config
    from graftbench.record import claim_token
    from graftbench.sweep.launchers import worker_command, worker_env
    from graftbench.train import runner

    if run_dir is None:
        cfg = config.compose(overrides or [])
        run_dir = runner.run_dir_for(cfg)
        if dry_run:
            from graftbench.train.tasks import count_parameters

            typer.echo(OmegaConf.to_yaml(cfg))
            typer.echo(f"# model: {count_parameters(cfg):,} parameters")
            typer.echo(f"# run directory: {run_dir}")
            return
        runner.prepare_run(cfg, overrides or [])
    else:
        cfg = runner.load(run_dir, _json(execution), overrides or [])
        if dry_run:
            typer.echo(OmegaConf.to_yaml(cfg))
            return
    token = claim_token()
    if cfg.trainer.devices > 1 and "RANK" not in os.environ:
        import subprocess

        command = worker_command(run_dir, config.execution(cfg), cfg.trainer.devices)
        code = subprocess.call(command, env=worker_env(token, cfg.trainer.threads))
    else:
        code = runner.execute(run_dir, cfg, token)
    if "RANK" not in os.environ or os.environ.get("RANK") == "0":
        typer.echo(f"results: {run_dir}")
    raise typer.Exit(int(code))


def _json(text: str | None) -> dict[str, Any] | None:
    import json

    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"--execution: not JSON ({err})") from None
    if not isinstance(value, dict):
        raise UserError("--execution: expected a JSON object")
    return value


@app.command(epilog=_examples("sweep"))
def sweep(
    overrides: Overrides = None,
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="Summarise the runs (and device-hours); launch nothing."),
    ] = False,
    list_runs: Annotated[
        bool, typer.Option("--list", help="With --dry-run: every run, not a summary.")
    ] = False,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Also rerun runs that failed.")
    ] = False,
    extend: Annotated[
        bool, typer.Option("--extend", help="Add this grid's runs to an existing sweep.")
    ] = False,
    wait: Annotated[
        bool, typer.Option("--wait", help="SLURM: wait for the runs instead of returning.")
    ] = False,
) -> None:
    """Run the M×D grid (bare: the 3×3 demo). Comma lists sweep any key: seed=0,1,2."""
    from graftbench.sweep import workflow

    options = workflow.Options(dry_run, list_runs, retry_failed, extend, wait)
    code = workflow.run(overrides or [], options, typer.echo)
    raise typer.Exit(int(code))


@app.command(epilog=_examples("status"))
def status(
    sweep_dir: Annotated[Path, typer.Argument(help="A sweep directory, e.g. results/demo")],
    watch: Annotated[
        bool, typer.Option("--watch", help="Redraw in place until every run ends.")
    ] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between redraws.")] = 5.0,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Failed runs' messages in full.")
    ] = False,
) -> None:
    """A table of the sweep's runs: state, progress, latest metric, SLURM job, elapsed.
    It fits the terminal's width: a failed run's message is cut (in full with --verbose)."""
    if not watch:
        _print_status(sweep_dir, verbose)
        return
    import time

    from rich.live import Live
    from rich.text import Text

    from graftbench.sweep.status import collect, render

    with Live(auto_refresh=False, vertical_overflow="crop") as live:
        while True:
            states = collect(sweep_dir)
            width, height = live.console.size  # read again each time: the terminal may resize
            text = render(states, width=width, height=height - 1, verbose=verbose)
            live.update(Text(text, no_wrap=True, overflow="ellipsis"), refresh=True)
            if all(s.status in ("done", "diverged", "failed") for s in states):
                break
            time.sleep(interval)


@app.command(epilog=_examples("table"))
def table(
    sweep_dir: Annotated[Path, typer.Argument(help="A sweep directory, e.g. results/demo")],
    metric: Annotated[
        str | None, typer.Option(help="Comma-separated: top1,top5 | bleu | loss (default: all).")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="markdown | latex | csv | json")] = (
        "markdown"
    ),
    out: Annotated[Path | None, typer.Option(help="Write to this file (atomically).")] = None,
    compare: Annotated[
        Path | None, typer.Option(help="Reference numbers in the same M×D layout (CSV).")
    ] = None,
    decimals: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Digits after the point (default: as many as the seeds' spread and the "
            "effects of M and D need).",
        ),
    ] = None,
    transfer: Annotated[
        bool,
        typer.Option(
            "--transfer",
            help="Schedule transfer: D alone, M#D and D with the transferred schedule side by "
            "side, with their optimizer-state memory.",
        ),
    ] = False,
) -> None:
    """The paper's table: magnitude (rows) × direction (columns), mean ± std over seeds."""
    from graftbench import rundir
    from graftbench.report.sweep_tables import sweep_tables

    text, problems = sweep_tables(
        sweep_dir,
        metric.split(",") if metric else None,
        fmt=fmt,
        decimals=decimals,
        compare=compare,
        transfer=transfer,
    )
    for problem in problems:
        typer.echo(f"note: {problem}", err=True)
    if out is None:
        typer.echo(text)
    else:
        rundir.write_text_atomic(out, text if text.endswith("\n") else text + "\n")
        typer.echo(f"wrote {out}")


@app.command(epilog=_examples("plot"))
def plot(
    sweep_dir: Annotated[Path, typer.Argument(help="A sweep directory, e.g. results/demo")],
    metric: Annotated[
        str | None, typer.Option(help="Eval metrics to draw, comma-separated (default: top1,top5).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Folder (default: <sweep>/figures).")] = None,
) -> None:
    """Figure 1 of the paper for a sweep: curves colored by M and styled by D, small multiples
    per M, and the implicit step-size correction ||dM||/||dD|| (mean and per layer)."""
    from graftbench.report.plots import plot_sweep

    folder = out or sweep_dir / "figures"
    for path in (folder, folder.parent):
        if path.is_symlink():
            raise UserError(f"{path} is a symbolic link; refusing to write through it")
    written, messages = plot_sweep(sweep_dir, folder, metric.split(",") if metric else None)
    for message in messages:
        typer.echo(f"note: {message}", err=True)
    for path in written:
        typer.echo(f"wrote {path}")


@app.command(epilog=_examples("transfer"))
def transfer(
    run_dir: Annotated[
        Path, typer.Argument(help="A finished grafted run, e.g. results/demo/adagrad+sgd-s0-…")
    ],
    kind: Annotated[
        str,
        typer.Option(
            help="static: one multiplier per layer (the median of c) | piecewise: "
            "piecewise-linear in the fraction of training, fitted"
        ),
    ] = "static",
    knots: Annotated[
        int | None, typer.Option(help="Knots of a piecewise fit (default 4).", min=2)
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write here (default: RUN_DIR/transfer-<kind>.json).")
    ] = None,
) -> None:
    """Distil a grafted run's per-layer ||dM||/||dD||, with its schedule divided out, into a
    schedule for D alone: c(t) = ratio(t) / schedule(t), lr_layer(t) = lr_D · schedule(t) ·
    c_layer(t). Train it with `graftbench train magnitude=<D> schedule=transferred
    schedule.source=FILE`."""
    from graftbench import transfer as transfers

    extra = {} if knots is None else {"knots": knots}
    made, path = transfers.distil(run_dir, kind, out=out, **extra)
    typer.echo(f"wrote {path}")
    typer.echo(made.describe())
    typer.echo(
        f"train D with it: graftbench train magnitude={made.direction['name']} "
        f"schedule=transferred schedule.source={path}"
    )


@app.command(epilog=_examples("sync"))
def sync(
    sweep_dir: Annotated[Path, typer.Argument(help="A sweep directory, e.g. results/demo")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the `wandb sync` command; upload nothing.")
    ] = False,
) -> None:
    """Upload the sweep's offline W&B runs (`wandb sync`); tables never need W&B."""
    import shlex
    import subprocess

    if not sweep_dir.is_dir():
        raise UserError(f"no sweep at {sweep_dir}")
    offline = sorted(sweep_dir.glob("*/wandb/offline-run-*"))
    if not offline:
        typer.echo(f"no offline W&B runs under {sweep_dir} (train with logger=wandb)")
        return
    command = [sys.executable, "-m", "wandb", "sync", *map(str, offline)]
    if dry_run:
        typer.echo(shlex.join(command))
        return
    code = subprocess.call(command)
    if code:
        raise UserError(f"wandb sync failed (exit {code}); are you logged in (`wandb login`)?")
    typer.echo(f"synced {len(offline)} run(s)")


def _complete_list(incomplete: str) -> list[str]:
    from graftbench import catalog

    return [name for name in catalog.LISTS if name.startswith(incomplete)]


@app.command("list", epilog=_examples("list"))
def list_(
    what: Annotated[
        str | None,
        typer.Argument(
            metavar="WHAT",
            help="optimizers, models, data, schedules, experiments, launchers or loggers: "
            "every choice of that group with its keys and their defaults.",
            autocompletion=_complete_list,
            show_default=False,
        ),
    ] = None,
) -> None:
    """Every choice of every config group, with a one-line description; a group's keys."""
    from graftbench import catalog

    typer.echo(catalog.overview() if what is None else catalog.details(what))


def _finished(run_dir: Path) -> bool:
    from graftbench.record import RunRecord
    from graftbench.rundir import RunDirError

    if run_dir.is_symlink():
        return False  # refused by the runner
    try:
        return RunRecord(run_dir).status().finished
    except (RunDirError, ValueError):
        return False  # the runner reports what is wrong with the directory


def _print_status(sweep_dir: Path, verbose: bool) -> None:
    from graftbench.sweep.status import collect, render

    typer.echo(render(collect(sweep_dir), width=_terminal_width(), verbose=verbose))


def _terminal_width() -> int | None:
    """The terminal's width ($COLUMNS first); None when printing into a pipe or a file."""
    import shutil

    if "COLUMNS" in os.environ or sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def main() -> None:
    """Entry point: user mistakes end with one line on stderr and exit code 2."""
    from graftbench.rundir import RunDirError

    for command in app.registered_commands:  # every command shows its flags as flags
        if command.cls in (None, typer.core.TyperCommand):
            command.cls = _Command
    try:
        app(prog_name="graftbench")
    except UserError as err:
        print(f"graftbench: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except RunDirError as err:  # a results directory that cannot be used as it is
        print(f"graftbench: error: {err}", file=sys.stderr)
        sys.exit(2)
    except OSError as err:  # the file system said no: permissions, a full disk, ...
        where = f"{err.filename}: " if err.filename else ""
        print(f"graftbench: error: {where}{err.strerror or err}", file=sys.stderr)
        sys.exit(1)
