"""The ``graftbench`` command: parse, call, print. The work happens in the modules it calls."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

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
        typer.Option("--run-dir", help="Run (or resume) a prepared run directory instead."),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the resolved config; train nothing.")
    ] = False,
) -> None:
    """Train one run in the foreground (resuming it if it has a checkpoint)."""
    from graftbench import config
    from graftbench.sweep.launchers import worker_command
    from graftbench.train import runner

    if run_dir is None:
        cfg = config.compose(overrides or [])
        if dry_run:
            typer.echo(OmegaConf.to_yaml(cfg))
            typer.echo(f"# run directory: {runner.run_dir_for(cfg)}")
            return
        run_dir = runner.prepare(cfg, overrides or [])
    devices = runner.load_config(run_dir).trainer.devices
    if devices > 1 and "RANK" not in os.environ:
        import subprocess

        code = subprocess.call(worker_command(run_dir, devices))
    else:
        code = runner.execute(run_dir)
    if "RANK" not in os.environ or os.environ.get("RANK") == "0":
        typer.echo(f"results: {run_dir}")
    raise typer.Exit(code)


def main() -> None:
    """Entry point: user mistakes end with one line on stderr and exit code 2."""
    try:
        app()
    except UserError as err:
        print(f"graftbench: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
