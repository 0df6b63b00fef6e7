#!/usr/bin/env python3
"""Rule entry point: a class and class probabilities for every object -> results/{sample}/objects.parquet."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope.pipeline import cli  # noqa: E402
from snakescope.pipeline import steps

cli.main(steps.classify_step, __doc__, steps.classify_arguments)
