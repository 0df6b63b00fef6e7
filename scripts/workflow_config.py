#!/usr/bin/env python3
"""Rule entry point: the resolved config (JSON on the command line) -> results/config.json, read by every provenance job."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope.pipeline import cli  # noqa: E402
from snakescope.pipeline import steps

cli.main(steps.workflow_config_step, __doc__, steps.workflow_config_arguments)
