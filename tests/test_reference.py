"""README.md's demo section and results/reference/demo/ agree with each other.

The section is generated (``make reference``: scripts/reference.py). These tests read its
numbers back as a reader sees them, independently of the script's formatting code, and compare
them with ``table.json`` (and ``table.json`` with the per-run numbers in ``runs.csv``): a number
edited by hand, a stale README or a reference from other runs fails. The mutation tests show
that the comparison can fail.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import re
import statistics
import sys
from collections import defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "results" / "reference" / "demo"
README = ROOT / "README.md"
NUMBER = r"(-?\d+(?:\.\d+)?)"
CI = rf"{NUMBER} \(95% CI {NUMBER}–{NUMBER}\)"
CELL = re.compile(rf"{NUMBER} ± {NUMBER} \[{NUMBER}, {NUMBER}\] \(n=(\d+)\)")
EFFECT = re.compile(
    rf"(M×D|M|D) F\((\d+), (\d+)\) = {NUMBER}, p (<|=) {NUMBER}, partial η² = {NUMBER}"
)


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("reference", ROOT / "scripts" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


reference = _script()


def section() -> str:
    text = README.read_text()
    found = reference.section_of(text)
    assert found, f"README.md has no section between {reference.BEGIN} and {reference.END}"
    return found


def table_json() -> list[dict[str, Any]]:
    return json.loads((REFERENCE / "table.json").read_text())


# -- reading the README as a reader does --------------------------------------------------
def close(shown: str, value: float | None) -> bool:
    """Whether ``shown`` is ``value`` rounded to the decimals ``shown`` has."""
    if value is None:
        return False
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return abs(float(shown) - value) <= 0.5 * 10**-decimals + 1e-9


def table_cells(text: str, metric: str) -> dict[tuple[str, str], tuple[str, ...]]:
    """The cells of the markdown table under the heading ``#### <metric> (``."""
    lines = text.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(f"#### {metric} ("))
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip("|").split("|")])
    header, body = rows[0], rows[2:]  # rows[1]: the |:---| line
    cells = {}
    for row in body:
        for direction, text_ in zip(header[1:], row[1:], strict=True):
            match = CELL.search(text_)
            assert match, f"cannot read the cell {row[0]}#{direction}: {text_!r}"
            cells[row[0], direction] = match.groups()
    return cells


def claim(text: str) -> str:
    """The paragraph that states the answer (it opens with a bold sentence)."""
    return next(p for p in text.split("\n\n") if p.startswith("**") and "**:" not in p[:12])


def mismatches(text: str, data: list[dict[str, Any]]) -> list[str]:
    """Every number of the README section that disagrees with ``table.json``."""
    problems = []
    for table in data:
        problems += _cell_mismatches(text, table)
    primary = data[0]
    stats = primary["statistics"]
    paragraph = claim(text)
    spread = re.search(rf"moves the test loss by {CI} on average, changing D by {CI}", paragraph)
    if not spread:
        return [*problems, "the claim does not say how far changing M and D move the test loss"]
    for i, key in enumerate(("by_magnitude", "by_direction")):
        shown = spread.groups()[3 * i : 3 * i + 3]
        problems += _interval_mismatches(f"claim: spread {key}", shown, stats["spread"][key])
    problems += _anova_mismatches(paragraph, stats)

    c = stats["clustering"]
    curves = re.search(
        rf"curves (.+?): changing M moves them by {CI}, changing D by {CI}, a new seed by {CI} "
        rf".*?ratio M/D {CI}",
        paragraph,
    )
    if not curves:
        return [*problems, "the claim does not state the clustering of the curves"]
    if ("cluster by M" in curves.group(1)) != (c["verdict"] == "by M"):
        problems.append(f"claim: clustering {curves.group(1)!r}, verdict {c['verdict']!r}")
    numbers = curves.groups()[1:]
    for i, key in enumerate(("same_direction", "same_magnitude", "noise_floor", "ratio")):
        shown = numbers[3 * i : 3 * i + 3]
        problems += _interval_mismatches(f"claim: clustering {key}", shown, c[key])

    apart = re.search(r"the 95% CIs of (\d+) of the (\d+) pairs of cells", text)
    cells = [(x["ci_low"], x["ci_high"]) for x in primary["cells"]]
    counted = sum(a[0] > b[1] or b[0] > a[1] for a, b in combinations(cells, 2))
    expected = (counted, math.comb(len(cells), 2))
    if not apart or (int(apart.group(1)), int(apart.group(2))) != expected:
        problems.append(f"intro: the CIs of {counted} pairs of cells lie apart, not as said")
    return problems


def _cell_mismatches(text: str, table: dict[str, Any]) -> list[str]:
    name = table["metric"].split(".", 1)[1]
    shown = table_cells(text, name)
    problems = []
    for cell in table["cells"]:
        key = (cell["magnitude"], cell["direction"])
        *numbers, n = shown[key]
        expected = (cell["mean"], cell["std"], cell["ci_low"], cell["ci_high"])
        for what, s, v in zip(("mean", "std", "CI low", "CI high"), numbers, expected, strict=True):
            if not close(s, v):
                problems.append(f"{name} {key}: {what} {s} in README, {v} in table.json")
        if int(n) != cell["n"]:
            problems.append(f"{name} {key}: n={n} in README, {cell['n']} in table.json")
    return problems


def _interval_mismatches(label: str, shown: tuple[str, ...], expected: dict[str, Any]) -> list[str]:
    values = (expected[k] for k in ("estimate", "low", "high"))
    return [
        f"{label}: {s} in README, {v} in table.json"
        for s, v in zip(shown, values, strict=True)
        if not close(s, v)
    ]


def _anova_mismatches(paragraph: str, stats: dict[str, Any]) -> list[str]:
    problems = []
    effects = {e["term"]: e for e in stats["anova"]["effects"]}
    found = {m.group(1): m.groups() for m in EFFECT.finditer(paragraph)}
    if set(found) != set(effects):
        problems.append(f"claim: ANOVA terms {sorted(found)}, table.json has {sorted(effects)}")
    for term, (_, df, df_resid, f, relation, p, eta) in found.items():
        e = effects.get(term)
        if e is None:
            continue
        if (int(df), int(df_resid)) != (e["df"], stats["anova"]["df_resid"]):
            problems.append(f"claim: {term} degrees of freedom differ")
        if not close(f, e["f_value"]) or not close(eta, e["partial_eta_sq"]):
            problems.append(f"claim: {term} F {f} or partial η² {eta} differ from table.json")
        p_ok = e["p"] < float(p) if relation == "<" else close(p, e["p"])
        if not p_ok:
            problems.append(f"claim: {term} p {relation} {p}, table.json has {e['p']}")
    significant = {t for t, e in effects.items() if e["p"] < stats["alpha"]}
    headline = paragraph.split("**")[1]
    expected = {
        frozenset({"M"}): "M drives the result",
        frozenset({"D"}): "D drives the result",
        frozenset({"M", "D"}): "Both M and D move the result",
        frozenset(): "Neither M nor D moves the result",
    }[frozenset(significant & {"M", "D"})]
    if not headline.startswith(expected):
        problems.append(f"claim: {headline!r} does not say {expected!r}")
    if ("M×D interaction is beyond seed noise" in paragraph) != ("M×D" in significant):
        problems.append("claim: the M×D interaction is misstated")
    return problems


# -- the tests --------------------------------------------------------------------------------
def test_readme_opens_with_the_two_commands() -> None:
    lines = README.read_text().split("\n")
    code = lines[lines.index("```bash") + 1 : lines.index("```bash") + 3]
    assert code[0].startswith("make demo") and code[1].startswith("make test")
    assert README.read_text().index("make demo") < README.read_text().index(reference.BEGIN)


def test_readme_section_is_what_make_reference_renders() -> None:
    assert section() == reference.render_section(REFERENCE), (
        "README.md's demo section differs from what scripts/reference.py renders from "
        "results/reference/demo/: run `python scripts/reference.py --readme-only`"
    )


def test_readme_numbers_match_table_json() -> None:
    assert mismatches(section(), table_json()) == []


def test_table_json_matches_the_runs() -> None:
    """Each cell's mean, std and n are those of its runs in runs.csv (so the tables come from
    the runs the reference names)."""
    values: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    with (REFERENCE / "runs.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            for metric in ("loss", "top1"):
                values[metric, row["magnitude"], row["direction"]].append(float(row[metric]))
    for table in table_json():
        metric = table["metric"].split(".", 1)[1]
        for cell in table["cells"]:
            runs = values[metric, cell["magnitude"], cell["direction"]]
            assert len(runs) == cell["n"]
            assert math.isclose(statistics.fmean(runs), cell["mean"], rel_tol=1e-12)
            assert math.isclose(statistics.stdev(runs), cell["std"], rel_tol=1e-9)


def test_figures_the_readme_shows_exist() -> None:
    links = re.findall(r"\((results/reference/demo/[^)]+)\)", section())
    assert any(link.endswith(".png") for link in links)
    for link in links:
        assert (ROOT / link).exists(), link


def threads_mismatches(text: str, check: dict[str, Any]) -> list[str]:
    """The thread-check paragraph against ``threads.json``."""
    paragraph = next((p for p in text.split("\n\n") if p.startswith("With 2 threads")), None)
    if paragraph is None:
        return ["no paragraph on the thread check"]
    problems = []
    two = check["threads"]["2"]["statistics"]
    spread = re.search(rf"moves the test loss by {CI}, changing D by {CI}", paragraph)
    if not spread:
        return ["the thread check does not say how far changing M and D move the test loss"]
    for i, key in enumerate(("by_magnitude", "by_direction")):
        shown = spread.groups()[3 * i : 3 * i + 3]
        problems += _interval_mismatches(f"threads=2: spread {key}", shown, two["spread"][key])
    bounds = re.search(
        rf"cell means by up to {NUMBER}, against a median seed std of {NUMBER}", paragraph
    )
    if not bounds or not (
        close(bounds.group(1), check["max_cell_difference"])
        and close(bounds.group(2), check["median_seed_std"])
    ):
        problems.append("threads=2: the difference of cell means or the seed std is misstated")
    if ("The claim holds on both" in paragraph) != check["holds"]:
        problems.append(f"threads=2: the verdict is misstated (holds: {check['holds']})")
    return problems


def test_thread_check_paragraph_matches_threads_json() -> None:
    path = REFERENCE / "threads.json"
    if not path.exists():
        assert "With 2 threads" not in section()
        return
    check = json.loads(path.read_text())
    same_runs = set(check["runs"]["1"]) == set(reference.read_runs_csv(REFERENCE / "runs.csv"))
    if not same_runs or check["threads"]["1"]["cells"] != table_json()[0]["cells"]:
        assert "With 2 threads" not in section(), "a thread check of other runs is shown"
        return
    assert threads_mismatches(section(), check) == []
    changed = section().replace("The claim holds on both", "The claim does not hold on both")
    changed = changed.replace("The claim does not hold on both in every", "The claim holds on both")
    assert threads_mismatches(changed, check), "a changed verdict went unnoticed"


def _bumped(text: str, old: str) -> str:
    """``text`` with the first ``old`` (ending in a number as shown) changed in its last
    digit."""
    assert old in text, old
    prefix, number = re.match(rf"(.*?){NUMBER}$", old).groups()
    digits = len(number.split(".")[1]) if "." in number else 0
    return text.replace(old, f"{prefix}{float(number) + 3 * 10**-digits:.{digits}f}", 1)


@pytest.mark.parametrize(
    "where",
    ["cell mean", "cell CI", "spread", "ANOVA F", "clustering ratio", "headline", "pairs apart"],
)
def test_a_changed_number_is_caught(where: str) -> None:
    text, data = section(), table_json()
    first = data[0]["cells"][0]["text"]
    paragraph = claim(text)
    if where == "cell mean":
        changed = text.replace(first, _bumped(first, first.split(" ")[0]), 1)
    elif where == "cell CI":
        low = first.split("[")[1].split(",")[0]
        changed = text.replace(first, _bumped(first, low), 1)
    elif where == "spread":
        shown = re.search(rf"moves the test loss by {CI}", paragraph).group(1)
        changed = text.replace(paragraph, _bumped(paragraph, shown))
    elif where == "ANOVA F":
        changed = text.replace(paragraph, _bumped(paragraph, EFFECT.search(paragraph).group(4)))
    elif where == "clustering ratio":
        shown = re.search(rf"ratio M/D {CI}", paragraph).group(1)
        changed = text.replace(paragraph, _bumped(paragraph, f"ratio M/D {shown}"))
    elif where == "headline":
        bold = paragraph.split("**")[1]
        changed = text.replace(bold, "Neither M nor D moves the result, say", 1)
        if bold.startswith("Neither"):
            changed = text.replace(bold, "M drives the result, say", 1)
    else:
        n = int(re.search(r"the 95% CIs of (\d+) of", text).group(1))
        changed = text.replace(f"CIs of {n} of", f"CIs of {n + 1} of", 1)
    assert changed != text
    assert mismatches(changed, data), f"a changed {where} went unnoticed"
