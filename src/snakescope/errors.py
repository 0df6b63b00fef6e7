"""One exception type for problems with a user's input, so every rule reports them alike."""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A problem with a user's file or setting, reported as ``<where>: <problem>``.

    ``where`` names the file (or the config key / sheet row) so a user running hundreds of
    samples can tell at once which one is bad and why.
    """

    def __init__(self, where: str | Path, problem: str):
        self.where = str(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")
