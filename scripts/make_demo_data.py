#!/usr/bin/env python3
"""Write the demo dataset (real nuclei + synthetic time-lapses) that config/samples.tsv lists."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from snakescope.demo import make_demo_data  # noqa: E402

if __name__ == "__main__":
    root = sys.argv[1] if len(sys.argv) > 1 else "resources/demo"
    sheet = sys.argv[2] if len(sys.argv) > 2 else None
    for row in make_demo_data(root, sheet):
        print(f"{row['sample_id']:<10} {row['image']}")
