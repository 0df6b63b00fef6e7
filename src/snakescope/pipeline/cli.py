"""The one entry point of every rule: ``python scripts/snakescope.py <command> ...``.

Commands:

* ``run PLAN [--threads N]``: the job a plan file describes (a stage
  batch, a training, a scatter part, the summary and report);
* ``gather KIND --out CSV --manifests MANIFEST...``: per-sample metrics of one kind, per sample and summed;
* ``check FAILURES``: ends with an error listing the failed samples, if there are any;
* ``merge-types --labels TIF --types CSV TYPE=LABELS.tif ...``: one label file per cell type
  into the labels and ``label,type`` table the samples sheet takes (a typed U-Net's input).

Rules call it with the interpreter of their environment (a local venv, or ``python``
inside the rule's conda env), so the same entry point serves local runs, ``--sdm conda``
and SLURM jobs. A problem with the user's input or a job-level fault (disk full, out of
memory) ends the command with one line naming the file and the problem.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="snakescope", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the job of a plan file")
    run.add_argument("plan")
    run.add_argument("--threads", type=int, default=1)
    gather = sub.add_parser("gather", help="gather per-sample metrics")
    gather.add_argument("kind", choices=["restoration", "segmentation", "classification", "tracking", "detection",
                                         "pixel_classes"])
    gather.add_argument("--out", nargs="+", required=True,
                        help="the table; for pixel_classes the summed confusion (CSV), the scores (CSV), the plot "
                             "and the row percentages (CSV)")
    gather.add_argument("--manifests", nargs="+", required=True, help="the finish stage's manifests")
    check = sub.add_parser("check", help="fail when samples failed")
    check.add_argument("failures")
    merge = sub.add_parser("merge-types", help="one label file per cell type -> labels + label,type CSV")
    merge.add_argument("files", nargs="+", metavar="TYPE=LABELS.tif")
    merge.add_argument("--labels", required=True, help="the merged labels TIFF to write")
    merge.add_argument("--types", required=True, help="the label,type CSV to write")
    return p


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv=None) -> None:
    from snakescope.errors import InputError
    from snakescope.pipeline.runner import JobError, _job_level, describe_job_error

    args = _parser().parse_args(argv)
    setup_logging()
    log = logging.getLogger("snakescope")
    start = time.perf_counter()
    try:
        if args.command == "run":
            from snakescope.pipeline.runner import run_task

            run_task(args.plan, args.threads)
        elif args.command == "gather":
            from snakescope.pipeline.gather import gather_metrics

            gather_metrics(args.kind, args.manifests, *args.out)
        elif args.command == "merge-types":
            from snakescope.segmentation.unet.types import merge_type_labels

            pairs = [f.partition("=") for f in args.files]
            bad = [f for f, (name, eq, path) in zip(args.files, pairs) if not (name and eq and path)]
            if bad:
                raise InputError(bad[0], "give each type's labels as TYPE=PATH")
            counts = merge_type_labels({name: path for name, _, path in pairs}, args.labels, args.types)
            log.info("merged %s into %s and %s", ", ".join(f"{n}: {c} objects" for n, c in counts.items()),
                     args.labels, args.types)
        else:
            from snakescope.report.summary import check_failures

            check_failures(args.failures)
    except (InputError, JobError) as exc:
        log.error("%s", exc)
        sys.exit(1)
    except Exception as exc:
        if not _job_level(exc):
            raise
        log.error("%s", describe_job_error(exc))
        sys.exit(1)
    log.info("done in %.1f s", time.perf_counter() - start)
