"""The command line explains itself (issue 13), tested through the real CLI in a subprocess:
--version, `list`, help with examples and flags, shell completion, `status` within the
terminal's width (and --watch redrawing in place, in a pseudo-terminal), `table` on what a
folder holds, and a key given twice."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import pty
import re
import shlex
import struct
import subprocess
import sys
import termios
import threading
import time
from importlib import metadata
from pathlib import Path

import pytest
import typer

from graftbench import cli, config, rundir
from graftbench.optim.rules import RULES
from tests.test_report import OPTIMIZERS, run_id, write_manifest, write_run
from tests.train_helpers import REPO, env, train_in_process

pytestmark = pytest.mark.timeout(600)


def graftbench(
    *args: str, cwd: Path, python: tuple[str, ...] = (), **extra: str
) -> subprocess.CompletedProcess:
    """The CLI in a subprocess, its output into a pipe (no terminal), ``extra`` in its env."""
    environment = {k: v for k, v in env(**extra).items() if k != "COLUMNS" or "COLUMNS" in extra}
    return subprocess.run(
        [sys.executable, *python, "-m", "graftbench", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )


def imported(importtime: str) -> set[str]:
    """Module names from ``python -X importtime`` output."""
    return {line.rsplit("|", 1)[1].strip() for line in importtime.splitlines() if "|" in line}


# -- --version and list -------------------------------------------------------------------
def test_version_names_the_package_torch_and_the_commit_without_importing_torch(tmp_path):
    result = graftbench("--version", cwd=tmp_path, python=("-X", "importtime"))
    assert result.returncode == 0, result.stderr
    sha = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    lines = result.stdout.splitlines()
    assert lines[0] == f"graftbench {metadata.version('graftbench')}"
    assert lines[1] == f"torch {metadata.version('torch')}"
    assert re.fullmatch(rf"git {sha}( \(uncommitted changes\))?", lines[2])
    assert "torch" not in imported(result.stderr)


def test_list_shows_every_choice_of_every_group_with_its_description(tmp_path):
    result = graftbench("list", cwd=tmp_path, python=("-X", "importtime"))
    assert result.returncode == 0, result.stderr
    assert "torch" not in imported(result.stderr)
    for group, options in config.groups().items():
        for name in options:
            description = config.description(group, name)
            assert description, f"conf/{group}/{name}.yaml has no first comment line"
            assert re.search(rf"^  {name} +{re.escape(description)}$", result.stdout, re.M)
    for label in ("optimizers", "models", "data", "schedules", "experiments", "launchers"):
        assert re.search(rf"^{label} \(", result.stdout, re.M)


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g, os_ in config.groups().items() for o in os_]
)
def test_every_conf_file_starts_with_a_one_line_description(group, option):
    """The first comment line is what `list` shows: a phrase of its own, not the start of a
    sentence that goes on in the next line."""
    text = config.description(group, option)
    assert text.count("(") == text.count(")") and text.count("`") % 2 == 0, text
    last = text.rsplit(" ", 1)[-1].lower()
    assert last not in {"a", "an", "and", "of", "or", "the", "to", "with", "about", "every"}, text


def test_list_optimizers_shows_each_hyperparameter_with_the_default_a_run_gets(tmp_path):
    """Defaults come from the update rules (Rule.defaults) through the conf files: SGD's and
    AdaGrad's momentum 0.9 is the file's, every other value the rule's own."""
    result = graftbench("list", "optimizers", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    blocks = dict(
        (block.split()[0], block) for block in result.stdout.split("\n\n")[1:] if block.strip()
    )
    assert set(blocks) == set(config.groups()["optim"])
    for name, block in blocks.items():
        shown = {}
        for line in block.splitlines()[1:]:
            key, value, *_ = re.split(r"\s{2,}", line.strip())
            shown[key] = json.loads(value) if value[0] in "-0123456789[tfn" else value
        composed = config.plain(config.compose([f"magnitude={name}"]))["magnitude"]
        assert set(shown) == set(RULES[name].defaults), name
        assert shown == {key: composed[key] for key in shown}, name
    assert re.search(r"^  momentum +0\.9$", blocks["sgd"], re.M)
    assert re.search(r"^  momentum +0\.9$", blocks["adagrad"], re.M)
    assert RULES["adagrad"].defaults["momentum"] == 0  # so 0.9 came from conf/optim/adagrad.yaml


def test_list_other_groups_and_a_wrong_name(tmp_path):
    models = graftbench("list", "models", cwd=tmp_path)
    assert re.search(r"^  depth +8 +layers: 6n\+2$", models.stdout, re.M)
    assert re.search(r"^  num_classes +\$\{data\.num_classes\} +outputs$", models.stdout, re.M)
    experiments = graftbench("list", "experiments", cwd=tmp_path)
    assert (
        "grid: magnitude: sgd, adam, adagrad; direction: sgd, adam, adagrad" in experiments.stdout
    )
    launchers = graftbench("list", "launchers", cwd=tmp_path)
    assert re.search(r"^  partition +null +sbatch --partition$", launchers.stdout, re.M)
    wrong = graftbench("list", "optimisers", cwd=tmp_path)
    assert wrong.returncode == 2 and wrong.stdout == ""
    assert wrong.stderr.strip().splitlines() == [
        "graftbench: error: cannot list 'optimisers'; choose from: optimizers, models, data, "
        "schedules, experiments, launchers, loggers"
    ]


# -- help -----------------------------------------------------------------------------------
def commands() -> list[str]:
    return list(typer.main.get_command(cli.app).commands)


@pytest.mark.parametrize("command", commands())
def test_help_shows_examples_and_flags_as_flags(tmp_path, command):
    result = graftbench(command, "--help", cwd=tmp_path, COLUMNS="200")
    assert result.returncode == 0, result.stderr
    assert "<bool>" not in result.stdout
    assert 2 <= len(cli.EXAMPLES[command]) <= 3
    for what, line in cli.EXAMPLES[command]:
        assert f"# {what}" in result.stdout and line in result.stdout
    top = graftbench("--help", cwd=tmp_path, COLUMNS="200")
    assert "<bool>" not in top.stdout
    assert "--version" in top.stdout and "--install-completion" in top.stdout


def test_every_example_in_the_help_runs(tmp_path):
    """Each example, from a folder holding results/demo (training examples as --dry-run)."""
    entries = []
    for i, m in enumerate(OPTIMIZERS):
        for j, d in enumerate(OPTIMIZERS):
            for seed in (0, 1):
                entry = {"run_id": run_id(m, d, seed), "magnitude": m, "direction": d, "seed": seed}
                final = {"top1": 60 + 5 * i + j + seed, "top5": 80 + i + j, "loss": 1.0 - 0.1 * i}
                write_run(tmp_path / "results" / "demo", entry, "done", final, curves=True)
                entries.append(entry)
    write_manifest(tmp_path / "results" / "demo", entries)
    (tmp_path / "reference.csv").write_text(
        "M,sgd,adam,adagrad\nsgd,70.1,71.2,72.3\nadam,73.4,74.5,75.6\nadagrad,76.7,77.8,78.9\n"
    )
    grafted = train_in_process(
        tmp_path / "grafted",
        "magnitude=adagrad",
        "direction=sgd",
        "model.width=4",
        "trainer.max_steps=12",
        "trainer.layer_log_every_steps=1",
    )[1]
    example = tmp_path / "results" / "demo" / "adagrad+sgd-s0-1a2b3c4d"  # the examples' run
    example.mkdir()
    for name in ("config.yaml", "run.json", "summary.json", "metrics.jsonl"):
        (example / name).write_bytes((grafted / name).read_bytes())
    for command, examples in cli.EXAMPLES.items():
        for _, line in examples:
            words = shlex.split(line)[1:]
            if command in ("train", "sweep") and "--dry-run" not in words:
                words.append("--dry-run")
            result = graftbench(*words, cwd=tmp_path)
            assert result.returncode == 0, (line, result.stdout[-2000:], result.stderr[-2000:])
    assert (tmp_path / "top1.tex").read_text().startswith("% top1 (final")
    assert (tmp_path / "figures" / "curves.png").is_file()


# -- shell completion ------------------------------------------------------------------------
def complete_bash(words: list[str], tmp_path: Path) -> list[str]:
    """What typer's bash completion hands bash for these COMP_WORDS (the last one is being
    typed), through the real CLI."""
    result = graftbench(
        cwd=tmp_path,
        COMP_WORDS=" ".join(words),
        COMP_CWORD=str(len(words) - 1),
        _GRAFTBENCH_COMPLETE="complete_bash",
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_completion_of_commands_choices_keys_and_values(tmp_path):
    optimizers = config.groups()["optim"]
    assert complete_bash(["graftbench", "tr"], tmp_path) == ["train", "transfer"]
    assert complete_bash(["graftbench", "list", "exp"], tmp_path) == ["experiments"]
    # bash splits `magnitude=ad` at "=": the words are magnitude, =, ad
    assert complete_bash(["graftbench", "train", "magnitude", "=", "ad"], tmp_path) == [
        o for o in optimizers if o.startswith("ad")
    ]
    assert complete_bash(["graftbench", "sweep", "direction", "="], tmp_path) == optimizers
    assert complete_bash(["graftbench", "train", "mag"], tmp_path) == [
        f"magnitude={o}" for o in optimizers
    ]
    assert complete_bash(["graftbench", "train", "experiment=p"], tmp_path) == [
        "experiment=paper_imagenet",
        "experiment=paper_wmt14",
    ]
    models = complete_bash(["graftbench", "train", "model", "="], tmp_path)
    assert models == config.groups()["model"]
    assert complete_bash(["graftbench", "train", "trainer.dev"], tmp_path) == [
        "trainer.devices=",
        "trainer.device=",
    ]
    assert complete_bash(["graftbench", "train", "trainer.device", "=", ""], tmp_path) == [
        "auto",
        "cpu",
        "cuda",
    ]
    top = complete_bash(["graftbench", "train", ""], tmp_path)
    for key in ("magnitude=", "direction=", "model=", "data=", "schedule=", "experiment="):
        assert key in top
    assert {"launcher=", "logger=", "seed=", "trainer.", "peak_lr."} <= set(top)
    assert "--dry-run" in complete_bash(["graftbench", "train", "--dr"], tmp_path)


def test_completion_in_zsh_shows_descriptions_and_imports_no_torch(tmp_path):
    result = graftbench(
        cwd=tmp_path,
        python=("-X", "importtime"),
        _TYPER_COMPLETE_ARGS="graftbench train magnitude=adam model=small",
        _GRAFTBENCH_COMPLETE="complete_zsh",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('_arguments \'*: :(("model=small_resnet":"A CIFAR-style')
    assert "torch" not in imported(result.stderr)


def test_the_installed_bash_completion_completes(tmp_path):
    """--install-completion writes typer's script; bash, sourcing it, completes names."""
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "graftbench"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m graftbench "$@"\n')
    wrapper.chmod(0o755)
    path = f"{bin_dir}:{os.environ['PATH']}"
    installed = graftbench("--install-completion", "bash", cwd=tmp_path, HOME=str(home), PATH=path)
    assert installed.returncode == 0, installed.stderr
    script = home / ".bash_completions" / "graftbench.sh"
    assert script.is_file() and str(script) in (home / ".bashrc").read_text()
    probe = (
        f"source {shlex.quote(str(script))}\n"
        "COMP_WORDS=(graftbench train magnitude = sg); COMP_CWORD=4\n"
        "_graftbench_completion graftbench\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    bash = subprocess.run(
        ["bash", "--norc", "-c", probe],
        env=env(HOME=str(home), PATH=path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bash.stdout.split() == ["sgd"], bash.stderr


# -- status ---------------------------------------------------------------------------------
MESSAGE = (
    "ValueError: model.depth must be 6n+2 (8, 14, 20, ...), got 9; choose another depth "
    "and run the sweep again to retry the failed runs\nsecond line of the message"
)


def status_sweep(root: Path, runs: int = 4, pending: int = 0) -> None:
    """A sweep of ``runs`` runs: one failed with a long two-line message, ``pending`` left
    pending, the others done."""
    entries = []
    for seed in range(runs):
        entry = {"run_id": run_id("adam", "sgd", seed), "magnitude": "adam", "direction": "sgd"}
        entry["seed"] = seed
        entries.append(entry)
        if seed == 1:
            write_run(root, {**entry, "error": MESSAGE}, "failed", None, curves=False)
        elif seed >= runs - pending:
            write_run(root, entry, "pending", None, curves=False)
        else:
            write_run(root, entry, "done", {"top1": 70.0 + seed}, curves=False)
    write_manifest(root, entries)


def test_status_fits_the_terminal_width_and_verbose_has_the_full_message(tmp_path):
    status_sweep(tmp_path / "sweep")
    narrow = graftbench("status", "sweep", cwd=tmp_path, COLUMNS="64")
    assert narrow.returncode == 0, narrow.stderr
    lines = narrow.stdout.splitlines()
    assert max(map(len, lines)) <= 64
    failed = next(line for line in lines if " failed " in line)
    assert failed.startswith(run_id("adam", "sgd", 1)) and failed.endswith("…")
    assert "ValueError: model." in failed
    assert lines[-1] == "3 done, 1 failed"

    verbose = graftbench("status", "sweep", "--verbose", cwd=tmp_path, COLUMNS="64")
    assert f"{run_id('adam', 'sgd', 1)}: failed: {MESSAGE}" in verbose.stdout
    table = verbose.stdout.split("3 done, 1 failed")[0]
    assert max(map(len, table.splitlines())) <= 64

    piped = graftbench("status", "sweep", cwd=tmp_path)  # no terminal: nothing to fit
    assert MESSAGE.splitlines()[0] + " …" in piped.stdout


def emulate(output: str, rows: int, columns: int) -> tuple[list[str], int, int]:
    """A minimal terminal for what rich's Live writes: the final screen, how many lines
    scrolled off the top, and how many lines wrapped at the right edge."""
    screen = [[" "] * columns for _ in range(rows)]
    row = col = scrolled = wrapped = 0
    tokens = re.finditer(r"\x1b\[([0-9;?]*)([A-Za-z])|\x1b\][^\x07]*\x07|\x1b.|(.)", output, re.S)

    def newline() -> None:
        nonlocal row, scrolled
        if row == rows - 1:
            scrolled += 1
            screen.pop(0)
            screen.append([" "] * columns)
        else:
            row += 1

    for token in tokens:
        args, command, char = token.group(1), token.group(2), token.group(3)
        if command == "A":
            row = max(0, row - int(args or 1))
        elif command == "K":
            screen[row] = (
                [" "] * columns if args == "2" else screen[row][:col] + [" "] * (columns - col)
            )
        elif char == "\r":
            col = 0
        elif char == "\n":
            newline()
        elif char is not None and char.isprintable():
            if col == columns:
                wrapped += 1
                col = 0
                newline()
            screen[row][col] = char
            col += 1
    return ["".join(line).rstrip() for line in screen], scrolled, wrapped


def test_status_watch_redraws_in_place_without_scrolling(tmp_path):
    """In a 12 × 70 terminal, a 20-run sweep redrawn every 0.2 s: no line ever scrolls off
    the top or wraps; the runs that do not fit are counted on the screen."""
    rows, columns = 12, 70
    sweep = tmp_path / "sweep"
    status_sweep(sweep, runs=20, pending=1)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    environment = {
        k: v for k, v in env(TERM="xterm-256color").items() if k not in ("COLUMNS", "LINES")
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "graftbench", "status", str(sweep), "--watch", "--interval", "0.2"],
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=environment,
        cwd=tmp_path,
    )
    os.close(follower)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal closed: the process ended
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while b"".join(chunks).count(b"more (") < 4:  # the first draw and three redraws
            assert process.poll() is None and time.monotonic() < deadline, b"".join(chunks)
            time.sleep(0.1)
        pending = sweep / run_id("adam", "sgd", 19) / rundir.RUN
        rundir.write_json(pending, {**rundir.read_json(pending), "status": "done"})
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        reader.join(timeout=10)
        os.close(leader)
    output = b"".join(chunks).decode()
    screen, scrolled, wrapped = emulate(output, rows, columns)
    assert scrolled == 0 and wrapped == 0, screen
    text = "\n".join(screen)
    assert "more (`graftbench status` without --watch)" in text
    assert "19 done, 1 failed" in text and "ValueError: model.depth" in text


# -- table ----------------------------------------------------------------------------------
def test_table_decimals_follow_the_spread(tmp_path):
    """99.72 never shows as 100 beside "changing M moves top5 by 0.28"."""
    entries = []
    for i, m in enumerate(("sgd", "adam")):
        for seed in (0, 1, 2):
            entry = {"run_id": run_id(m, "sgd", seed), "magnitude": m, "direction": "sgd"}
            entry["seed"] = seed
            top5 = 100.0 if i == 0 else 99.72 + 0.2 * (seed - 1)
            write_run(tmp_path / "sweep", entry, "done", {"top5": top5}, curves=False)
            entries.append(entry)
    write_manifest(tmp_path / "sweep", entries)
    result = graftbench("table", "sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "| 99.72 ± 0.20 [99.22, 100.22] (n=3)" in result.stdout
    assert "changing M moves top5 by 0.28 (95% CI " in result.stdout
    assert "| 100 " not in result.stdout


def test_table_of_a_folder_without_runs_says_so(tmp_path):
    (tmp_path / "empty").mkdir()
    empty = graftbench("table", "empty", cwd=tmp_path)
    assert empty.returncode == 2 and empty.stdout == ""
    assert empty.stderr.splitlines() == [
        "graftbench: error: no runs in empty (a sweep folder holds <run id>/run.json)"
    ]
    status_sweep(tmp_path / "results" / "demo")
    above = graftbench("table", "results", cwd=tmp_path)  # one level too high
    assert above.returncode == 2
    assert above.stderr.strip().endswith("; sweeps under it: demo")


def test_table_lists_runs_outside_the_grid_apart(tmp_path):
    """A `train` with other settings into the sweep's folder (same M, D and seed) is listed,
    not averaged into the grid's cells."""
    sweep = tmp_path / "sweep"
    entries = []
    for m in ("sgd", "adam"):
        for seed in (0, 1):
            entry = {"run_id": run_id(m, "sgd", seed), "magnitude": m, "direction": "sgd"}
            entry.update(seed=seed, overrides=[f"magnitude={m}", "direction=sgd", f"seed={seed}"])
            write_run(sweep, entry, "done", {"top1": 70.0 + seed}, curves=True)
            entries.append(entry)
    write_manifest(sweep, entries)
    stray = {"run_id": "sgd+sgd-s0-99999999", "magnitude": "sgd", "direction": "sgd", "seed": 0}
    stray["overrides"] = ["magnitude=sgd", "trainer.epochs=1"]
    write_run(sweep, stray, "done", {"top1": 5.0}, curves=True)

    result = graftbench("table", "sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    tables, outside = result.stdout.split("### Outside the grid")
    assert tables.count("70.50 ± 0.71") == 2 and "(n=2)" in tables and "epochs" not in tables
    assert "sgd+sgd-s0-99999999" not in tables
    assert re.search(r"^\| sgd\+sgd-s0-99999999 +\| sgd +\| sgd +\| 0 +\| done +\|$", outside, re.M)
    assert "not part of the sweep's grid" in outside

    as_csv = graftbench("table", "sweep", "--format", "csv", cwd=tmp_path)
    cells = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [(c["magnitude"], c["n"]) for c in cells] == [("sgd", "2"), ("adam", "2")]
    assert "not part of the sweep's grid, so not in the csv: sgd+sgd-s0-99999999" in as_csv.stderr

    alone = graftbench("table", str(sweep / "sgd+sgd-s0-99999999"), cwd=tmp_path)
    assert alone.returncode == 0 and "5.00 (n=1)" in alone.stdout  # a run dir is its own grid


# -- a key given twice ----------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_key_given_twice_is_a_one_line_error(tmp_path, command):
    result = graftbench(command, "trainer.epochs=1,2", "trainer.epochs=3,4", cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "graftbench: error: 'trainer.epochs' is given twice ('trainer.epochs=1,2' and "
        "'trainer.epochs=3,4'); give it once (a comma list sweeps it)"
    ]
    assert not (tmp_path / "results").exists()
