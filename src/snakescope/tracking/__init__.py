"""Tracking: detections from label time-lapses, LAP linking with gap closing and divisions,
per-track statistics, and the Cell Tracking Challenge (CTC) format and metrics.

``detections`` (objects per frame, sub-pixel refinement, points files), ``matching`` (the
linker's bipartite matching solver), ``linking`` (the linker, the Tracks format,
:func:`track_labels`), ``statistics`` (per-track statistics), ``ctc`` (CTC result folders,
TRA/DET/SEG and division scores, pooling over samples). :func:`track_sample` is one
sample's tracking stage: from the label image to the CTC folder, tables and QC figure.
"""

from __future__ import annotations

from pathlib import Path

from snakescope.settings import Tracking
from snakescope.tracking.ctc import evaluate_ctc, summarize_metrics, write_ctc_result
from snakescope.tracking.linking import Tracks, link, track_labels, write_tracks_table
from snakescope.tracking.statistics import summarize_tracks, track_statistics, write_track_statistics

__all__ = ["Tracks", "evaluate_ctc", "link", "summarize_metrics", "summarize_tracks", "track_labels", "track_sample",
           "track_statistics", "write_ctc_result", "write_track_statistics", "write_tracks_table"]


def track_sample(labels_path: str | Path, image_path: str | Path, settings: Tracking, *, channel: int, sample: str,
                 ctc: str | Path, table: str | Path, stats: str | Path, figure: str | Path,
                 napari: str | Path | None = None, geff: str | Path | None = None) -> dict:
    """Track one sample's segmented time-lapse and write every tracking output.

    Reads the labels (``labels.ome.zarr``) and, for sub-pixel refinement only, ``channel`` of
    the analysed image; writes the CTC result folder ``ctc``, the napari tracks table
    ``table`` (CSV), the per-track statistics ``stats`` (CSV; speeds per second when the
    labels carry a time interval) and the y-x track plot ``figure`` (PNG); with ``napari``
    and ``geff``, the tracks in micrometres for napari's Tracks layer (CSV + graph JSON) and
    as a GEFF graph (snakescope.exchange.tracks). Returns the :func:`summarize_tracks` summary.
    """
    from snakescope.io import ngff
    from snakescope.io.frames import ChannelStack
    from snakescope.io.labels import read_labels_image
    from snakescope.report.qc import track_plot

    labels = read_labels_image(labels_path)
    intensity = None
    if settings.refine != "none":
        image = ngff.read_image(image_path)
        intensity = ChannelStack(image.data, image.axes, channel)
    tracks = track_labels(labels, settings, intensity=intensity, source=str(labels_path))
    write_ctc_result(labels.data, tracks, ctc, source=str(labels_path))
    write_tracks_table(tracks, table)
    summary = summarize_tracks(write_track_statistics(tracks, stats, time_interval=labels.voxel_size.get("t")))
    track_plot(tracks, figure, title=f"{sample}: {tracks.n_tracks} tracks, {tracks.n_divisions} divisions",
               summary=summary, frame_shape=labels.shape[1:])
    if napari or geff:
        from snakescope.exchange.tracks import write_geff, write_napari_tracks

        voxel = [labels.voxel_size[a] for a in labels.axes if a in "zyx"]
        if napari:
            write_napari_tracks(tracks, napari, voxel)
        if geff:
            write_geff(tracks, geff, voxel, time_interval=labels.voxel_size.get("t"))
    return summary
