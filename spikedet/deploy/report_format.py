"""Formatting helpers of the deployment report: JSON-safe values, Markdown tables and the
PNG plots (matplotlib, optional)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np


def jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy scalars/arrays converted, tuples to lists, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def fmt(v: Any) -> str:
    """Numbers with 4 significant digits (integers in full), everything else as text."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        if v != 0 and (abs(v) >= 1e7 or abs(v) < 1e-3):
            return f"{v:.4g}"
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, (list, tuple)):
        return "x".join(str(x) for x in v) if all(isinstance(x, int) for x in v) else str(v)
    if isinstance(v, dict):
        return json.dumps(jsonable(v), separators=(",", ":"))
    return str(v).replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return lines + [""]


def is_scalar(v: Any) -> bool:
    return not isinstance(v, (dict, list, tuple))


def render_section(title: str, value: Any, level: int = 3) -> list[str]:
    """Markdown for a free-form value: scalars as a key/value table, dicts of dicts as tables."""
    head = ["#" * level + " " + title, ""]
    if isinstance(value, (dict, list, tuple)) and not value:
        return head + ["(empty)", ""]
    if is_scalar(value):
        return head + [fmt(value), ""]
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, dict) for v in value):
            cols = list(dict.fromkeys(k for v in value for k in v))
            return head + table(cols, [[v.get(c, "") for c in cols] for v in value])
        return head + [fmt(list(value)), ""]
    scalars = {k: v for k, v in value.items() if is_scalar(v) or isinstance(v, (list, tuple))}
    nested = {k: v for k, v in value.items() if isinstance(v, dict)}
    lines = head
    if scalars:
        lines += table(["key", "value"], [[k, v] for k, v in scalars.items()])
    flat = {k: v for k, v in nested.items() if v and all(is_scalar(x) for x in v.values())}
    if len(flat) >= 2 or (flat and len(flat) == len(nested) and not scalars):
        cols = list(dict.fromkeys(c for v in flat.values() for c in v))
        lines += table([""] + cols, [[k] + [v.get(c, "") for c in cols] for k, v in flat.items()])
        nested = {k: v for k, v in nested.items() if k not in flat}
    for k, v in nested.items():
        lines += render_section(f"{title}: {k}" if level > 3 else k, v, min(level + 1, 6))
    return lines


def kib(bits: float) -> float:
    return bits / 8192


def render_plots(report: dict) -> dict[str, bytes] | str:
    """The three PNGs as bytes, or the reason they cannot be drawn (no matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        return f"plots skipped: {err}"
    layers = report["layers"]
    names = [ly["name"] for ly in layers]
    x = np.arange(len(layers))
    series = {
        "energy_per_layer.png": (
            "dynamic energy per inference (nJ)",
            {
                "graded": [ly["energy_graded"]["total_pj"] / 1e3 for ly in layers],
                "binary": [ly["energy_binary"]["total_pj"] / 1e3 for ly in layers],
            },
        ),
        "firing_rate_per_layer.png": (
            "firing rate (units / neuron / step, includes D)",
            {"firing rate": [ly["firing_rate"] for ly in layers]},
        ),
        "cores_per_layer.png": ("cores", {"cores": [ly["cores"] for ly in layers]}),
    }
    out: dict[str, bytes] = {}
    for fname, (ylabel, data) in series.items():
        fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(layers) + 2), 4.0))
        width = 0.8 / len(data)
        for i, (label, vals) in enumerate(data.items()):
            ax.bar(x + (i - (len(data) - 1) / 2) * width, vals, width, label=label)
        ax.set_xticks(x, names, rotation=60, ha="right", fontsize=7)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{report.get('model', '')} on {report['profile']['name']}")
        if len(data) > 1:
            ax.legend()
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        out[fname] = buf.getvalue()
    return out
