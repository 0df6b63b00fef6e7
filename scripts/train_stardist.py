#!/usr/bin/env python3
"""Rule entry point: train a StarDist model from the samples' dense labels -> model folder (weights, thresholds, curves)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope.pipeline import cli  # noqa: E402
from snakescope.pipeline import steps

cli.main(steps.train_stardist_step, __doc__, steps.train_stardist_arguments)
