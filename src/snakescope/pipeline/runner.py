"""The batch runner: one job, many samples, one process.

A stage job reads its task (``results/jobs/<stage>-<batch>.plan.json``, written by
:mod:`snakescope.pipeline.plan`) and runs, for each sample in order, the sample's steps
(:mod:`snakescope.pipeline.stages`). Imports happen once and models are loaded once per
job (:class:`Context`), which is what makes thousands of small images cheap.

* **Skipping.** A step whose outputs exist and whose stamp is unchanged is skipped. The
  stamp (``results/<sample>/.snakescope/<step>.stamp``) is a digest of the step's options,
  the config it reads, the sample's sheet row and the signature (size and modification
  time) of every file it reads, so a rerun redoes exactly the samples whose inputs or
  settings changed: after an interruption, the samples not yet done; after rows were
  appended, the new ones.
* **Failures.** A problem with one sample (its file, its labels, its values, or an
  unexpected error while processing it) is logged as one line naming the file and the
  problem, the sample's later steps are skipped and the others go on. Each sample's own log
  is ``logs/<stage>/<sample>.log``. Problems of the job itself (disk full, out of memory, a
  model that cannot be loaded) end the job with an error, so Snakemake retries it with more
  resources; finished samples are then skipped.
* **Manifest.** The job's output, ``results/jobs/<stage>-<batch>.done.json``, lists every
  sample's status (ok, failed with the reason, skipped because an earlier stage failed) and
  each step's time. Later stages skip samples that failed earlier; the summary lists every
  failed sample and the run ends non-zero while any is listed (workflow rule
  ``check_samples``). A failed sample is tried again whenever its batch reruns: when one of
  its files changes, or with ``--forcerun <stage>``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from snakescope.errors import InputError
from snakescope.io.atomic import write_json
from snakescope.io.tiff import expand_image_path

log = logging.getLogger("snakescope.runner")

__all__ = ["Context", "JobError", "SampleWork", "run_task", "signature"]

#: OS errors that are the job's, not a sample's: retrying (elsewhere, with more room) helps.
JOB_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.ESTALE, errno.ENOMEM}


class JobError(Exception):
    """A problem of the whole job (not of one sample): one line, the job exits non-zero."""


@dataclass
class SampleWork:
    """One sample's part of a stage job: its sheet row, dimensionality and steps (in order)."""

    sample: str
    row: dict
    ndim: int
    steps: list

    @property
    def channel(self) -> int:
        return int(self.row.get("channel") or 0)


class Context:
    """What the samples of one job share: the config sections of the task, the threads, and
    models loaded once (``model(key, loader)``)."""

    def __init__(self, task: dict, threads: int):
        self.task = task
        self.config = task.get("config", {})
        self.threads = max(1, int(threads))
        self._models: dict = {}

    def model(self, key: str, loader):
        if key not in self._models:
            self._models[key] = loader()
        return self._models[key]

    def section(self, name: str):
        """A config section of the task as its typed settings object."""
        import typing

        from snakescope import settings

        return typing.get_type_hints(settings.Config)[name].from_dict(self.config[name])


# ---- signatures and stamps ---------------------------------------------------------------


def signature(path: str) -> list:
    """What identifies a file's content cheaply: size and modification time, for a folder
    (an NGFF image, a model) those of the files directly in it and its own; a glob: each file."""
    p = Path(path)
    with contextlib.suppress(OSError):
        if p.is_dir():
            entries = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(p) if e.is_file())
            return [p.stat().st_mtime_ns, entries]
        if p.is_file():
            st = p.stat()
            return [st.st_size, st.st_mtime_ns]
    files = [f for f in expand_image_path(path) if f.is_file()] if any(c in str(path) for c in "*?[") else []
    return [signature(str(f)) for f in files] or ["missing"]


def stamp_of(name: str, spec: dict, settings: dict, row: dict) -> str:
    content = {"step": name, "options": spec["options"], "outputs": spec["outputs"], "settings": settings, "row": row,
               "inputs": {k: [v, signature(v)] for k, v in spec["inputs"].items()}}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def stamp_path(sample: str, step: str) -> Path:
    return Path("results") / sample / ".snakescope" / f"{step}.stamp"


def _done(sample: str, name: str, spec: dict, stamp: str) -> bool:
    path = stamp_path(sample, name)
    return (path.is_file() and path.read_text() == stamp
            and all(Path(p).exists() for p in spec["outputs"].values()))


def _write_stamp(sample: str, name: str, stamp: str) -> None:
    path = stamp_path(sample, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".partial-{os.getpid()}")
    tmp.write_text(stamp)
    tmp.replace(path)


# ---- one sample ------------------------------------------------------------------------


@contextlib.contextmanager
def _sample_log(stage: str, sample: str):
    """Everything logged while a sample is processed also goes to logs/<stage>/<sample>.log."""
    path = Path("logs") / stage / f"{sample}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("snakescope")
    root.addHandler(handler)
    level = root.level
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        handler.close()


def _job_level(exc: BaseException) -> bool:
    return isinstance(exc, (MemoryError, JobError)) or (isinstance(exc, OSError) and exc.errno in JOB_ERRNOS)


def describe_job_error(exc: BaseException) -> str:
    """One line for a job-level failure, naming the file where there is one."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        where = exc.filename or "the results folder"
        return (f"{where}: no room to write ({exc.strerror}); free space or point the workflow at a larger disk, "
                "then rerun: finished samples are kept")
    if isinstance(exc, OSError):
        return f"{exc.filename or 'storage'}: {exc.strerror or exc}"
    if isinstance(exc, MemoryError):
        return "out of memory: rerun with more memory (resources.mem_mb, or the retry doubles it)"
    return str(exc)


def run_sample(stage: str, work: SampleWork, context: Context, steps_registry) -> dict:
    """Run (or skip) one sample's steps; return its manifest entry."""
    entry = {"status": "ok", "steps": {}}
    with _sample_log(stage, work.sample):
        for spec in work.steps:
            name = spec["step"]
            step = steps_registry[name]
            stamp = stamp_of(name, spec, step.settings_of(context.config), work.row)
            if _done(work.sample, name, spec, stamp):
                entry["steps"][name] = {"ran": False, "outputs": spec["outputs"]}
                continue
            stamp_path(work.sample, name).unlink(missing_ok=True)
            start = time.perf_counter()
            try:
                step.run(work, spec, context)
            except Exception as exc:  # noqa: BLE001 - a sample's problem must not stop the others
                if _job_level(exc):
                    raise
                if isinstance(exc, InputError):
                    message = str(exc)
                else:  # the traceback goes to the sample's log; the one line to the manifest
                    message = f"sample {work.sample} ({name}): unexpected {type(exc).__name__}: {exc}"
                    log.error("%s", traceback.format_exc())
                log.error("%s", message)
                entry.update(status="failed", step=name, error=message)
                break
            _write_stamp(work.sample, name, stamp)
            entry["steps"][name] = {"ran": True, "seconds": round(time.perf_counter() - start, 3),
                                    "outputs": spec["outputs"]}
            log.info("%s %s done in %.2f s", work.sample, name, entry["steps"][name]["seconds"])
    return entry


# ---- jobs --------------------------------------------------------------------------------


def _upstream_failures(task: dict) -> dict[str, str]:
    """Samples that failed (or were skipped) in an earlier stage of the same batch."""
    failed = {}
    for stage, path in task.get("upstream_manifests", {}).items():
        with contextlib.suppress(OSError, ValueError):
            for sid, entry in json.loads(Path(path).read_text())["samples"].items():
                if entry["status"] != "ok" and sid not in failed:
                    failed[sid] = f"not processed: {stage} {entry['status']}"
    return failed


def run_stage(task: dict, out: str, threads: int) -> dict:
    """Run a stage job: every sample of the batch, then the manifest (``out``)."""
    from snakescope.pipeline.stages import STEPS

    context = Context(task, threads)
    upstream = _upstream_failures(task)
    start = time.perf_counter()
    samples = {}
    for item in task["samples"]:
        work = SampleWork(item["sample"], item["row"], item["ndim"], item["steps"])
        if work.sample in upstream:
            samples[work.sample] = {"status": "skipped", "reason": upstream[work.sample], "steps": {}}
            continue
        samples[work.sample] = run_sample(task["stage"], work, context, STEPS)
    manifest = {"stage": task["stage"], "batch": task["batch"], "digest": task.get("digest"),
                "seconds": round(time.perf_counter() - start, 2), "samples": samples}
    write_json(out, manifest, sort_keys=False)
    counts = {s: sum(1 for e in samples.values() if e["status"] == s) for s in ("ok", "failed", "skipped")}
    ran = sum(1 for e in samples.values() for st in e["steps"].values() if st.get("ran"))
    log.info("%s %s: %d ok, %d failed, %d skipped; %d steps run in %.1f s", task["stage"], task["batch"],
             counts["ok"], counts["failed"], counts["skipped"], ran, manifest["seconds"])
    for sid, e in samples.items():
        if e["status"] == "failed":
            log.error("FAILED %s: %s", sid, e["error"])
    return manifest


def run_task(plan: str | Path, threads: int = 1) -> None:
    """Run the job described by a plan file."""
    from snakescope.pipeline import stages

    task = json.loads(Path(plan).read_text())
    kind = task["kind"]
    if kind == "stage":
        run_stage(task, task["manifest"], threads)
    elif kind in ("train", "candidate"):
        stages.train(task, Context(task, threads))
    elif kind == "select":
        from snakescope.training.sweep import select_model

        select_model(task)
    elif kind == "part":
        stages.segment_part(task, Context(task, threads))
    elif kind == "export":
        stages.export_model(task, Context(task, threads))
    elif kind == "summary":
        from snakescope.report.summary import write_summary

        write_summary(task)
    else:
        raise JobError(f"{plan}: unknown task kind {kind!r}")
