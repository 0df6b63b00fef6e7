#!/usr/bin/env python3
"""Rule entry point: train the 3-class (background/contour/body) U-Net from dense labels -> model folder."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope.pipeline import cli  # noqa: E402
from snakescope.pipeline import steps

cli.main(steps.train_unet_step, __doc__, steps.train_unet_arguments)
