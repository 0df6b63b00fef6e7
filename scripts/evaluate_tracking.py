#!/usr/bin/env python3
"""Rule entry point: TRA/DET/SEG and division scores against CTC ground truth -> results/{sample}/tracking_metrics.json."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope.pipeline import cli  # noqa: E402
from snakescope.pipeline import steps

cli.main(steps.evaluate_tracking_step, __doc__, steps.evaluate_tracking_arguments)
