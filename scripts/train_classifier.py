#!/usr/bin/env python3
"""Rule entry point: train the object classifier (CNN) from napari point annotations -> model folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope import cli, steps  # noqa: E402

cli.main(steps.train_classifier_step, __doc__, steps.train_classifier_arguments)
