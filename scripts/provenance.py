#!/usr/bin/env python3
"""Rule entry point: config, software versions, input checksums and commit -> results/{sample}/provenance.json."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope.pipeline import cli  # noqa: E402
from snakescope.pipeline import steps

cli.main(steps.provenance_step, __doc__, steps.provenance_arguments)
