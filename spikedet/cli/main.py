"""The ``spikedet`` command: argument parsing, command registry and the error wrapper.

Each command lives in its own module ``spikedet.cli.<name>_cmd`` exposing
``register(subparsers)``; that function adds a sub-parser and sets ``func`` to a callable taking
the parsed arguments and returning an exit code. Command modules import heavy libraries (torch,
Lava drivers) inside their ``run`` functions so ``spikedet --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from spikedet import __version__
from spikedet.errors import SpikedetError

# Only commands that work end to end are listed here.
COMMAND_MODULES = (
    "spikedet.cli.data_cmd",
    "spikedet.cli.model_cmd",
    "spikedet.cli.train_cmd",
    "spikedet.cli.export_cmd",
    "spikedet.cli.import_cmd",
    "spikedet.cli.import_weights_cmd",
    "spikedet.cli.deploy_cmd",
    "spikedet.cli.map_cmd",
    "spikedet.cli.report_cmd",
    "spikedet.cli.demo_cmd",
)


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors in the project's one-line format (exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"spikedet: error: {message} ({self.prog})\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="spikedet",
        description=(
            "Spiking object detectors: train (PyTorch) -> export (NIR) -> deploy on "
            "Loihi-style hardware (fixed-point and Lava simulation) -> per-layer energy report."
        ),
    )
    parser.add_argument("--version", action="version", version=f"spikedet {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the full traceback of expected errors too"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except SpikedetError as err:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"spikedet: error: {err.one_line()}\n")
        return 2
    except BrokenPipeError:
        # The reader went away (e.g. `spikedet ... | head`): not a failure of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        sys.stderr.write("spikedet: error: interrupted (keyboard)\n")
        return 130
    return int(code or 0)


if __name__ == "__main__":
    raise SystemExit(main())
