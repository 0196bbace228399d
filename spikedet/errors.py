"""The one error type for expected failures (bad input, a model that does not fit a target...).

The CLI prints ``spikedet: error: <what> (<where>)`` for it and exits with status 2; any other
exception is a bug and is shown with its traceback.
"""

from __future__ import annotations


class SpikedetError(Exception):
    """An expected failure: ``what`` went wrong, ``where`` (a file, a layer, a field)."""

    def __init__(self, what: str, where: str | None = None):
        self.what = what
        self.where = where
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = " ".join(str(self.what).split())
        return f"{text} ({self.where})" if self.where else text
