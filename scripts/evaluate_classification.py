#!/usr/bin/env python3
"""Rule entry point: class ground-truth points matched to segmented objects -> results/{sample}/classification_metrics.csv and qc/confusion.png."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope.pipeline import cli  # noqa: E402
from snakescope.pipeline import steps

cli.main(steps.evaluate_classification_step, __doc__, steps.evaluate_classification_arguments)
