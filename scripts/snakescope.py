#!/usr/bin/env python3
"""The entry point of every workflow rule (python scripts/snakescope.py --help)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope.pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
