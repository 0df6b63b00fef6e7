#!/usr/bin/env python3
"""Rule entry point: before/after (and target) figure of the restoration -> results/{sample}/qc/restoration.png."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope.pipeline import cli  # noqa: E402
from snakescope.pipeline import steps

cli.main(steps.qc_restoration_step, __doc__, steps.qc_restoration_arguments)
