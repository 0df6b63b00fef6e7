#!/usr/bin/env python3
"""Rule entry point: train a Noise2Void (n2v environment) or CARE model on the chosen samples -> results/models/{n2v,care}_{2d,3d}."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope.pipeline import cli  # noqa: E402
from snakescope.pipeline import steps

cli.main(steps.train_restoration_step, __doc__, steps.train_restoration_arguments)
