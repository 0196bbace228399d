"""`spikedet report OUT`: print the summary of a deployment report (OUT/report.json)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="print the per-layer summary of a deployment report",
        description=(
            "Read OUT/report.json written by 'spikedet deploy' and print a compact table: per "
            "layer neurons, cores, firing rate, synaptic ops and energy, then totals, the 45 nm "
            "comparison and the validation headline. The full report is OUT/report.md."
        ),
    )
    p.add_argument("out", type=Path, help="report folder (or the report.json file itself)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from spikedet.deploy.report import load_report, summary_table

    print(summary_table(load_report(args.out)))
    return 0
