#!/usr/bin/env python3
"""Rule entry point: what the run produced and where -> results/summary.md."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope.pipeline import cli  # noqa: E402
from snakescope.pipeline import steps

cli.main(steps.summary_step, __doc__, steps.summary_arguments)
