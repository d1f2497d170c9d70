"""The figures: files written, the color/style encoding, and the numbers drawn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from graftbench import rundir
from graftbench.report.clustering import cluster_curves
from graftbench.report.collect import load_curves
from graftbench.report.plots import (
    eval_metrics,
    figure_by_magnitude,
    figure_clustering,
    figure_curves,
    figure_layer_ratios,
    figure_step_size_correction,
    plot_sweep,
    varies,
)
from tests.test_report import OPTIMIZERS, STATUSES, STEPS, make_sweep, write_manifest
from tests.test_statistics import curve_frame


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots") / "sweep"
    make_sweep(root)
    return root


@pytest.fixture(scope="module")
def curves(sweep):
    return load_curves(sweep)[0]


UNHEALTHY = ("diverged", "failed")


def statuses(m: str, d: str) -> tuple[str, ...]:
    return STATUSES.get((m, d), ("done",) * 3)


def pairs_with_runs() -> set[tuple[str, str]]:
    """Pairs with a run that did not diverge, fail or go missing: they get a mean line."""
    return {
        (m, d)
        for m in OPTIMIZERS
        for d in OPTIMIZERS
        if set(statuses(m, d)) - {*UNHEALTHY, "missing"}
    }


def means(ax) -> list:
    return [
        line for line in ax.lines if line.get_linewidth() > 1 and line.get_linestyle() != "None"
    ]


def end_markers(ax) -> list:
    return [line for line in ax.lines if line.get_linestyle() == "None"]


def test_plot_sweep_writes_non_empty_png_and_pdf(sweep, tmp_path):
    paths, messages = plot_sweep(sweep, tmp_path / "figures", pairs=[("adam", "sgd")])
    names = sorted(p.name for p in paths)
    stems = ("by_magnitude", "clustering", "curves", "layers_adam-sgd", "step_size_correction")
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
    drawn = {(to_hex(line.get_color()), line.get_linestyle()) for line in means(train)}
    assert len(means(train)) == len(pairs_with_runs())
    assert drawn == {(color[m], dashes[d]) for m, d in pairs_with_runs()}
    # every diverged or failed run is a thin line of its own, ending in its marker
    bad = sorted(
        (color[m], dashes[d], s)
        for m in OPTIMIZERS
        for d in OPTIMIZERS
        for s in statuses(m, d)
        if s in UNHEALTHY
    )
    thin = [line for line in train.lines if line.get_linewidth() < 1]
    assert sorted((to_hex(line.get_color()), line.get_linestyle()) for line in thin) == [
        (c, style) for c, style, _ in bad
    ]
    marker = {"diverged": "x", "failed": "s"}
    assert sorted((to_hex(line.get_color()), line.get_marker()) for line in end_markers(train)) == (
        sorted((c, marker[s]) for c, _, s in bad)
    )
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert [t for t in legend if t.strip()] == [
        "M = sgd", "D = sgd", "band: min–max over seeds",
        "M = adam", "D = adam", "diverged run (last value)",
        "M = adagrad", "D = adagrad", "failed run (last value)",
    ]  # fmt: skip
    assert top1.get_title() == "eval top1"
    # evals are sparse (a short run may have one): every point gets a marker, so it shows
    assert {line.get_marker() for line in means(top1)} == {"o"}


def test_every_axis_is_labelled_and_losses_are_on_a_log_scale(curves):
    for figure in (figure_curves(curves, ["top1"]), figure_by_magnitude(curves, ["top1"])):
        for ax in figure.axes:
            assert ax.get_xlabel() == "step"
        first = [ax for ax in figure.axes if ax.get_ylabel()]
        assert {ax.get_ylabel() for ax in first} == {
            "training loss (log scale)",
            "eval top-1 accuracy (%)",
        }
        assert {ax.get_yscale() for ax in figure.axes if "loss" in ax.get_title()} == {"log"}
    # the mean of a loss over seeds is geometric: the seeds of sgd#sgd give 3/(step+1) each
    train = figure_curves(curves, []).axes[0]
    solid_blue = [
        line
        for line in means(train)
        if to_hex(line.get_color()) == to_hex("C0") and line.get_linestyle() == "-"
    ]
    np.testing.assert_allclose(solid_blue[0].get_ydata(), 3.0 / (np.arange(STEPS) + 1))


def test_a_blown_up_run_is_marked_at_the_edge_and_does_not_set_the_scale(curves):
    blown = curves.copy()
    run = blown["run_id"] == blown.loc[blown["status"] == "diverged", "run_id"].iloc[0]
    train = run & (blown["kind"] == "train")
    blown.loc[train, "loss"] = [1.0, 1e6, 1e30, np.inf, np.nan][: int(train.sum())]
    ax = figure_curves(blown, []).axes[0]
    healthy = blown[(blown["kind"] == "train") & ~blown["status"].isin(UNHEALTHY)]["loss"]
    low, high = ax.get_ylim()
    assert healthy.min() / 1.5 < low <= healthy.min() and healthy.max() <= high < 2 * healthy.max()
    pinned = [line for line in end_markers(ax) if line.get_ydata()[0] == high]
    assert len(pinned) == 1 and pinned[0].get_xdata()[0] == 2  # its last finite value: 1e30


def test_the_y_range_ignores_diverged_runs(curves):
    top1 = figure_curves(curves, ["top1"]).axes[1]
    evals = curves[curves["kind"] == "eval"]
    healthy = evals.loc[evals["status"] != "diverged", "top1"]
    low, high = top1.get_ylim()
    assert evals.loc[evals["status"] == "diverged", "top1"].max() < low <= healthy.min()
    assert healthy.max() <= high < healthy.max() + 0.1 * (healthy.max() - healthy.min())


def test_step_size_correction_shows_grafted_pairs_on_a_log_scale(curves):
    ax = figure_step_size_correction(curves).axes[0]
    assert ax.get_yscale() == "log" and "log scale" in ax.get_ylabel()
    drawn = means(ax)
    assert len(drawn) == len({(m, d) for m, d in pairs_with_runs() if m != d})
    steps = np.arange(STEPS)
    expected = (2.0**steps + 0.5 + steps) / 2  # the mean of the two layers' ratios
    for line in drawn:
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


def test_a_metric_that_never_varies_gets_no_panel_unless_asked_for(tmp_path):
    root = tmp_path / "sweep"
    make_sweep(root)
    for metrics in root.glob("*/metrics.jsonl"):  # top5 at 100% in every eval record
        rundir.append_jsonl(metrics, {"kind": "eval", "step": STEPS, "top1": 50.0, "top5": 100.0})
    _, messages = plot_sweep(root, tmp_path / "default", pairs=[], formats=("png",))
    assert "eval top5 is the same in every record; not drawn" in messages
    curves = load_curves(root)[0]
    assert eval_metrics(curves) == ["top1", "top5"] and not varies(curves, "top5")
    assert varies(curves, "top1")
    _, asked = plot_sweep(root, tmp_path / "asked", ["top1", "top5"], pairs=[], formats=("png",))
    assert not any("same in every record" in m for m in asked)


def test_the_clustering_figure_draws_the_measured_distances():
    clustering = cluster_curves(curve_frame(lambda i, j: 0.02 * (1 + i) + 0.001 * j))
    figure = figure_clustering(clustering)
    heat, bars = figure.axes[:2]
    np.testing.assert_allclose(heat.images[0].get_array(), clustering.distances.to_numpy())
    assert [t.get_text() for t in heat.get_xticklabels()] == clustering.cells
    assert len(heat.lines) == 2 * (len(OPTIMIZERS) - 1)  # the lines between the M blocks
    points = [c for c in bars.lines if c.get_marker() == "o"]
    assert [p.get_xdata()[0] for p in points] == [
        clustering.same_magnitude.estimate,
        clustering.same_direction.estimate,
        clustering.noise_floor.estimate,
    ]
    assert figure._suptitle.get_text() == clustering.conclusion()
    assert "cluster by M" in clustering.conclusion()
    assert heat.get_xlabel() and heat.get_ylabel() and bars.get_xlabel()
