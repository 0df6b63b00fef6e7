#!/usr/bin/env python3
"""Rule entry point: PSNR and SSIM of the input and the restored image against the clean target -> results/{sample}/restoration_metrics.csv."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope.pipeline import cli  # noqa: E402
from snakescope.pipeline import steps

cli.main(steps.evaluate_restoration_step, __doc__, steps.evaluate_restoration_arguments)
