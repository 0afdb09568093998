"""``python -m fusednn plot <results.json> [--out DIR]``: one PNG per op of a benchmark run.

Each PNG has one panel per mode (fwd, bwd, fwd+bwd) and plots throughput (FLOP/s or B/s,
whichever the op's rows count; the time where they count neither) against the shape
parameter that takes the most values across the op's shapes. One line per provider (a colour
each) and, where other shape parameters vary too (attention's D and causal), per combination
of them (a line style each). Error bars span the time's 20th..80th percentiles. The files
are ``<json name>-<op>.png``, beside the JSON unless ``out_dir`` names a folder.

matplotlib is an optional dependency (``pip install fusednn[plot]``); it is imported only here.
"""

from __future__ import annotations

import json
import math
import os
from typing import Optional

from .runner import shape_str, unit_scale

# A variant's line style and marker both change, so a single-point line still shows which it is.
_LINESTYLES, _MARKERS = ("-", "--", ":", "-."), ("o", "s", "^", "D", "v")
# (row field, unit, scale of the field's value to the unit)
_METRICS = (("tflops", "FLOP/s", 1e12), ("gbps", "B/s", 1e9))


def plot(results_path: str, out_dir: Optional[str] = None) -> list[str]:
    """Writes one PNG per op of the run in ``results_path``; returns their paths."""
    with open(results_path) as f:
        run = json.load(f)
    by_op: dict[str, list[dict]] = {}
    for row in run.get("results", []):
        by_op.setdefault(row["op"], []).append(row)
    out_dir = out_dir or os.path.dirname(os.path.abspath(results_path))
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(results_path))[0]
    paths = []
    for op, rows in by_op.items():
        path = os.path.join(out_dir, f"{stem}-{op}.png")
        _plot_op(op, rows, run).savefig(path, dpi=110)
        paths.append(path)
    return paths


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _SizeAxis:
    """The x axis: the numeric shape parameter with the most values (the first of a tie), the
    other parameters that vary making separate lines. Where that leaves most lines a single
    point (the norms vary rows and N together), x is the product of the numeric parameters
    that vary instead (the tensor's size)."""

    def __init__(self, rows: list[dict]):
        shapes = [r["shape"] for r in rows]
        keys = list(dict.fromkeys(k for shape in shapes for k in shape))
        varying = [k for k in keys if len({json.dumps(shape.get(k)) for shape in shapes}) > 1]
        numeric = [k for k in keys if all(_is_number(shape.get(k)) for shape in shapes)]
        best = max(numeric, key=lambda k: len({shape[k] for shape in shapes}), default=None)
        self.keys = [best] if best is not None else []
        self.others = [k for k in varying if k != best]
        product = [k for k in varying if k in numeric]
        if len(product) > 1 and self._mostly_single_points(rows):
            self.keys, self.others = product, [k for k in varying if k not in numeric]
        self.fixed = {k: v for k, v in shapes[0].items() if k not in self.keys and k not in varying}
        self.categories = list(dict.fromkeys(shape_str(shape) for shape in shapes))
        self.label = "×".join(self.keys) if self.keys else "shape"

    def variant(self, row: dict) -> tuple:
        return tuple((k, row["shape"].get(k)) for k in self.others)

    def position(self, row: dict) -> float:
        if not self.keys:
            return self.categories.index(shape_str(row["shape"]))
        return math.prod(row["shape"][k] for k in self.keys)

    def tick(self, row: dict) -> str:
        return "×".join(str(row["shape"][k]) for k in self.keys) if self.keys else shape_str(row["shape"])

    def _mostly_single_points(self, rows: list[dict]) -> bool:
        points: dict[tuple, set] = {}
        for r in rows:
            points.setdefault((r["mode"], r["provider"], self.variant(r)), set()).add(self.position(r))
        return 2 * sum(len(p) == 1 for p in points.values()) > len(points)

    def draw(self, ax, rows: list[dict]) -> None:
        ax.set_xlabel(self.label)
        ticks = {self.position(r): self.tick(r) for r in reversed(rows)}
        positions = sorted(ticks)
        if self.keys and positions[0] > 0 and positions[-1] >= 4 * positions[0]:
            ax.set_xscale("log", base=2)
        ax.minorticks_off()
        many = len(positions) > 6 or len(self.keys) != 1  # long labels: slanted
        ax.set_xticks(positions, [ticks[p] for p in positions], rotation=30 if many else 0,
                      ha="right" if many else "center", fontsize=7 if many else None)


def _metric(rows: list[dict]) -> tuple[Optional[str], str, float]:
    """(row field or None for the time, axis unit, scale of the field to that unit)."""
    for field, unit, to_base in _METRICS:
        values = [r[field] for r in rows if r.get(field) is not None]
        if values:
            scale, prefix = unit_scale(max(values) * to_base)
            return field, prefix + unit, to_base / scale
    return None, "ms", 1.0


def _point(row: dict, field: Optional[str], factor: float) -> tuple[float, float, float]:
    """(value, lower, upper) of one row: the time's p80 and p20 bound a throughput."""
    if field is None:
        return row["ms"], row["ms_p20"], row["ms_p80"]
    value = row[field] * factor
    return value, value * row["ms"] / row["ms_p80"], value * row["ms"] / row["ms_p20"]


def _plot_op(op: str, rows: list[dict], run: dict):
    from matplotlib.figure import Figure

    axis = _SizeAxis(rows)
    field, unit, factor = _metric(rows)
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    providers = list(dict.fromkeys(r["provider"] for r in rows))
    colours = {"fusednn": "black"} | {p: f"C{i}" for i, p in enumerate(p for p in providers if p != "fusednn")}
    variants = list(dict.fromkeys(axis.variant(r) for r in rows))

    fig = Figure(figsize=(4.8 * len(modes), 4.6), layout="constrained")
    axes = fig.subplots(1, len(modes), squeeze=False)[0]
    handles: dict[tuple, tuple[str, object]] = {}  # (variant, provider) order -> (label, line)
    for ax, mode in zip(axes, modes):
        series: dict[tuple, list[dict]] = {}
        for r in rows:
            if r["mode"] == mode:
                series.setdefault((r["provider"], axis.variant(r)), []).append(r)
        for (provider, variant), points in series.items():
            points.sort(key=axis.position)
            values = [_point(r, field, factor) for r in points]
            ys = [v for v, _, _ in values]
            style = variants.index(variant)
            linestyle, marker = _LINESTYLES[style % len(_LINESTYLES)], _MARKERS[style % len(_MARKERS)]
            label = " ".join([provider] + [f"{k}={v}" for k, v in variant if v is not None])
            handles[variants.index(variant), providers.index(provider)] = label, ax.errorbar(
                [axis.position(r) for r in points], ys,
                yerr=[[y - lo for y, lo, _ in values], [hi - y for y, _, hi in values]],
                color=colours[provider], linestyle=linestyle, marker=marker, markersize=4, capsize=2,
                linewidth=2.0 if provider == "fusednn" else 1.3, label=label)
        ax.set_title(mode)
        ax.grid(True, alpha=0.3)
        ax.set_ylabel(unit if field else "time (ms)")
        if field:
            ax.set_ylim(bottom=0)
        axis.draw(ax, rows)
    title = f"{op} on {run.get('device_label') or run.get('device')}, {rows[0]['dtype']}"
    title += f" ({shape_str(axis.fixed)})" if axis.fixed else ""
    threads = f", {run.get('threads')} threads" if run.get("device_type") == "cpu" else ""
    fig.suptitle(f"{title}\n{run.get('date', '')} {run.get('commit', '')}{threads}"
                 f"{', quick' if run.get('quick') else ''}; error bars: p20..p80 of the time", fontsize=10)
    labels, lines = zip(*(handles[key] for key in sorted(handles)))
    fig.legend(lines, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=8)
    return fig
