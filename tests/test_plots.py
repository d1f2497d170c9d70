"""The figures: files written, the color/style encoding, and the numbers drawn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from graftbench.report.collect import load_curves
from graftbench.report.plots import (
    eval_metrics,
    figure_curves,
    figure_layer_ratios,
    figure_step_size_correction,
    plot_sweep,
)
from tests.test_report import OPTIMIZERS, STATUSES, STEPS, make_sweep, write_manifest


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots") / "sweep"
    make_sweep(root)
    return root


@pytest.fixture(scope="module")
def curves(sweep):
    return load_curves(sweep)[0]


def pairs_with_runs() -> set[tuple[str, str]]:
    return {
        (m, d)
        for m in OPTIMIZERS
        for d in OPTIMIZERS
        if STATUSES.get((m, d), ("done",) * 3) != ("missing",) * 3
    }


def test_plot_sweep_writes_non_empty_png_and_pdf(sweep, tmp_path):
    paths, messages = plot_sweep(sweep, tmp_path / "figures", pairs=[("adam", "sgd")])
    names = sorted(p.name for p in paths)
    stems = ("by_magnitude", "curves", "layers_adam-sgd", "step_size_correction")
    assert names == sorted(f"{s}.{ext}" for s in stems for ext in ("pdf", "png"))
    for path in paths:
        head = path.read_bytes()[:8]
        assert path.stat().st_size > 1000
        assert head.startswith(b"\x89PNG" if path.suffix == ".png" else b"%PDF")
    assert len(messages) == 2 and all("summary.json" in m for m in messages)


@pytest.mark.parametrize("runs", [True, False])
def test_a_sweep_without_metrics_is_skipped_with_a_message(tmp_path, runs):
    root = tmp_path / "sweep"
    if runs:
        make_sweep(root, curves=False)
    else:
        root.mkdir()
        write_manifest(root, [{"run_id": "sgd#adam-s0", "magnitude": "sgd", "direction": "adam"}])
    paths, messages = plot_sweep(root, tmp_path / "figures")
    assert paths == [] and "no metrics recorded yet" in messages[-1]
    assert not (tmp_path / "figures").exists()


def test_curves_are_colored_by_magnitude_and_styled_by_direction(curves):
    figure = figure_curves(curves, ["top1"])
    train, top1 = figure.axes[:2]
    color = {m: to_hex(f"C{i}") for i, m in enumerate(OPTIMIZERS)}
    dashes = dict(zip(OPTIMIZERS, ("-", "--", ":"), strict=True))
    means = [line for line in train.lines if line.get_linewidth() > 1]
    drawn = {(to_hex(line.get_color()), line.get_linestyle()) for line in means}
    assert len(means) == len(pairs_with_runs())
    assert drawn == {(color[m], dashes[d]) for m, d in pairs_with_runs()}
    # a diverged seed beside seeds that did not diverge is drawn thin, on its own
    mixed = [
        (m, d)
        for (m, d), statuses in STATUSES.items()
        if "diverged" in statuses and set(statuses) - {"diverged", "missing"}
    ]
    thin = [line for line in train.lines if line.get_linewidth() < 1]
    assert sorted((to_hex(line.get_color()), line.get_linestyle()) for line in thin) == sorted(
        (color[m], dashes[d]) for m, d in mixed for s in STATUSES[m, d] if s == "diverged"
    )
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert [t for t in legend if t.strip()] == [
        "M = sgd", "D = sgd", "M = adam", "D = adam", "M = adagrad", "D = adagrad"
    ]  # fmt: skip
    assert top1.get_title() == "eval top1"
    # evals are sparse (a short run may have one): every point gets a marker, so it shows
    assert {line.get_marker() for line in top1.lines if line.get_linewidth() > 1} == {"o"}


def test_the_y_range_ignores_diverged_runs(curves):
    top1 = figure_curves(curves, ["top1"]).axes[1]
    evals = curves[curves["kind"] == "eval"]
    healthy = evals.loc[evals["status"] != "diverged", "top1"]
    low, high = top1.get_ylim()
    assert evals.loc[evals["status"] == "diverged", "top1"].max() < low <= healthy.min()
    assert healthy.max() <= high < healthy.max() + 0.1 * (healthy.max() - healthy.min())


def test_step_size_correction_shows_grafted_pairs_on_a_log_scale(curves):
    ax = figure_step_size_correction(curves).axes[0]
    assert ax.get_yscale() == "log"
    means = [line for line in ax.lines if line.get_linewidth() > 1]
    assert len(means) == len({(m, d) for m, d in pairs_with_runs() if m != d})
    steps = np.arange(STEPS)
    expected = (2.0**steps + 0.5 + steps) / 2  # the mean of the two layers' ratios
    for line in means:
        np.testing.assert_allclose(line.get_xdata(), steps)
        np.testing.assert_allclose(line.get_ydata(), expected)
    assert figure_step_size_correction(curves.drop(columns="graft.ratio_mean")) is None


def test_layer_heatmap_is_the_geometric_mean_over_seeds():
    layers = pd.DataFrame(
        {
            "magnitude": ["adam"] * 4,
            "direction": ["sgd"] * 4,
            "seed": [0, 0, 1, 1],
            "kind": ["layers"] * 4,
            "step": [0, 10, 0, 10],
            "ratio.conv.weight": [1.0, 2.0, 4.0, 8.0],
            "ratio.fc.bias": [0.5, 0.0, 0.5, 3.0],  # a zero ratio (zero direction) is skipped
        }
    )
    figure = figure_layer_ratios(layers, "adam", "sgd")
    mesh = figure.axes[0].collections[0]
    values = np.ma.getdata(mesh.get_array()).reshape(2, 2)
    np.testing.assert_allclose(values, [[2.0, 4.0], [0.5, 3.0]])
    assert [t.get_text() for t in figure.axes[0].get_yticklabels()] == ["conv.weight", "fc.bias"]
    assert figure_layer_ratios(layers, "sgd", "adam") is None


def test_eval_metrics_prefers_the_papers_metrics(curves):
    assert eval_metrics(curves) == ["top1"]
    assert eval_metrics(curves, ["final.loss", "bleu"]) == ["loss"]
