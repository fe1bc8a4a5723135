"""Do two evaluations differ beyond the noise? Per metric, the difference of two ``hfddpm evaluate`` results against
the noise of both (``uncertainty.differs_beyond_noise``), and whether the numbers are comparable at all (the same
feature extractor, reference set and sample count).

Example:
    >>> a = {"fd_digits": 10.0, "details": {"fd_digits": {"ci95": [9.0, 11.0], "num_samples": 1000}}}
    >>> b = {"fd_digits": 7.0, "details": {"fd_digits": {"ci95": [6.0, 8.0], "num_samples": 1000}}}
    >>> row = compare_results(a, b)[0]
    >>> row["verdict"], round(row["noise"], 2)
    ('B is better beyond the noise', 1.41)
"""

from __future__ import annotations

import json
from pathlib import Path

from .registry import METRIC_REGISTRY
from .uncertainty import DETAILS_KEY, differs_beyond_noise

METRICS_FILE = "metrics.json"
# What must match for two values of a metric to be compared (a reference by its fingerprint, not its name).
COMPARABLE = ("feature_extractor", "reference", "num_samples")


def _comparable(field: str, value):
    """What of a detail ``field`` must match: a reference's fingerprint (sha256, count), whatever path named it."""
    if field == "reference" and isinstance(value, dict) and "sha256" in value:
        return {k: v for k, v in value.items() if k != "name"}
    return value


def read_results(path: str | Path) -> dict:
    """An ``hfddpm evaluate`` result: a ``metrics.json`` file, or a pipeline folder holding one."""
    path = Path(path)
    file = path / METRICS_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"{file} does not exist: pass a metrics.json written by `hfddpm evaluate`, or a pipeline folder where"
            f" `hfddpm evaluate {path}` has written one."
        )
    not_results = f"{file} is not a metrics.json written by `hfddpm evaluate`"
    try:
        results = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{not_results} ({type(err).__name__}: {err}).") from None
    if not isinstance(results, dict) or not set(results) & set(METRIC_REGISTRY):
        raise ValueError(f"{not_results}: it holds none of the metrics {sorted(METRIC_REGISTRY)}.")
    return results


def compare_results(a: dict, b: dict) -> list[dict]:
    """One row per registered, ranked metric in both ``a`` and ``b``: the values, their intervals, ``difference``
    (B - A), ``noise``, ``verdict`` and ``mismatch`` (the settings that differ, which make the values incomparable)."""
    rows = []
    for key, metric in METRIC_REGISTRY.items():
        if metric.higher_is_better is None or not isinstance(a.get(key), (int, float)):
            continue
        if not isinstance(b.get(key), (int, float)):
            continue
        info_a, info_b = (r.get(DETAILS_KEY, {}).get(key, {}) for r in (a, b))
        ci_a, ci_b = info_a.get("ci95"), info_b.get("ci95")
        mismatch = [
            field
            for field in COMPARABLE
            if field in info_a and _comparable(field, info_a.get(field)) != _comparable(field, info_b.get(field))
        ]
        row = {"metric": key, "a": a[key], "b": b[key], "ci95_a": ci_a, "ci95_b": ci_b, "mismatch": mismatch}
        if ci_a is None or ci_b is None:
            row.update(difference=b[key] - a[key], noise=None, verdict="no interval: evaluate both again")
        else:
            differs, diff, noise = differs_beyond_noise(a[key], ci_a, b[key], ci_b)
            better = "B" if (diff > 0) == bool(metric.higher_is_better) else "A"
            verdict = f"{better} is better beyond the noise" if differs else "within the noise"
            row.update(difference=diff, noise=noise, verdict=verdict)
        if mismatch:
            row["verdict"] += f" (not comparable: {', '.join(mismatch)} differ)"
        rows.append(row)
    return rows


def format_comparison(rows: list[dict], name_a: str, name_b: str) -> str:
    """``compare_results`` as a text table."""
    lines = [f"A = {name_a}", f"B = {name_b}", ""]
    header = f"{'metric':<28} {'A [95% interval]':<30} {'B [95% interval]':<30} {'B - A':>10} {'noise':>9}  verdict"
    lines += [header, "-" * len(header)]

    def cell(value, ci):
        return f"{value:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "")

    for row in rows:
        noise = "—" if row["noise"] is None else f"{row['noise']:.3g}"
        lines.append(
            f"{row['metric']:<28} {cell(row['a'], row['ci95_a']):<30} {cell(row['b'], row['ci95_b']):<30}"
            f" {row['difference']:>10.3g} {noise:>9}  {row['verdict']}"
        )
    if not rows:
        lines.append("(no metric in both results)")
    lines += ["", "noise: sqrt(u_A^2 + u_B^2), u = the half-width of each 95% interval on the side facing the other."]
    return "\n".join(lines)
