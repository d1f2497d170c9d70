"""The ``graftbench`` command: parse, call, print. The work happens in the modules it calls."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from omegaconf import OmegaConf

from graftbench.errors import UserError

app = typer.Typer(
    help="Run the learning-rate grafting grid: M's step magnitude with D's step direction.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _commands() -> None:
    """Run the learning-rate grafting grid: M's step magnitude with D's step direction."""


Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="Hydra overrides, e.g. magnitude=adam direction=sgd trainer.epochs=3"),
]


@app.command()
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


@app.command()
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


@app.command()
def status(
    sweep_dir: Annotated[Path, typer.Argument(help="A sweep directory, e.g. results/demo")],
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until every run ends.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 5.0,
) -> None:
    """A table of the sweep's runs: state, progress, latest metric, SLURM job, elapsed."""
    if not watch:
        _print_status(sweep_dir)
        return
    import time

    from rich.live import Live
    from rich.text import Text

    from graftbench.sweep.status import collect, render

    with Live(auto_refresh=False) as live:
        while True:
            states = collect(sweep_dir)
            live.update(Text(render(states)), refresh=True)
            if all(s.status in ("done", "diverged", "failed") for s in states):
                break
            time.sleep(interval)


@app.command()
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
    decimals: Annotated[int | None, typer.Option(min=0, help="Digits after the point.")] = None,
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
    from graftbench.report import collect, tables

    runs, problems = collect.collect(sweep_dir)
    metrics = metric.split(",") if metric else None
    if transfer:
        from graftbench.report import transfers

        text = transfers.render(transfers.build(runs, metrics), fmt, decimals)
    else:
        if collect.transferred(runs).any():
            problems.append("runs with a transferred schedule are not M×D cells: see --transfer")
        curves, _ = collect.load_curves(sweep_dir, kinds=("train",), runs=runs)
        built = tables.build_tables(runs, metrics, curves=curves)
        if compare is not None:
            reference = tables.load_reference(compare)
            text = "\n".join(
                tables.render_comparison(tables.compare(t, reference), fmt, decimals) for t in built
            )
        else:
            text = tables.render(built, fmt, decimals)
    for problem in problems:
        typer.echo(f"note: {problem}", err=True)
    if out is None:
        typer.echo(text)
    else:
        rundir.write_text_atomic(out, text if text.endswith("\n") else text + "\n")
        typer.echo(f"wrote {out}")


@app.command()
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


@app.command()
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


@app.command()
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


def _finished(run_dir: Path) -> bool:
    from graftbench.record import RunRecord
    from graftbench.rundir import RunDirError

    if run_dir.is_symlink():
        return False  # refused by the runner
    try:
        return RunRecord(run_dir).status().finished
    except (RunDirError, ValueError):
        return False  # the runner reports what is wrong with the directory


def _print_status(sweep_dir: Path) -> None:
    from graftbench.sweep.status import collect, render

    typer.echo(render(collect(sweep_dir)))


def main() -> None:
    """Entry point: user mistakes end with one line on stderr and exit code 2."""
    from graftbench.rundir import RunDirError

    try:
        app()
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
