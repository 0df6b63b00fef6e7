"""snakescope: the Python package behind the snakescope Snakemake workflow.

Modules stay importable in every rule environment (the main TF 2.21 / numpy 2 stack and the
n2v TF 2.15 / numpy 1.26 stack), so heavy imports happen inside functions.
"""

__version__ = "0.1.0"
