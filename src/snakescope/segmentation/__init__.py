"""Segmentation: StarDist (:mod:`.stardist`), the three-class U-Net (:mod:`.unet`), their
training data (:mod:`.training_data`) and per-object measurements (:mod:`.measure`).

The functions here are what the stage layer calls for either method: load a model folder
once (:func:`load_model`, StarDist or U-Net told apart by its config.json), segment images
with it into labels.ome.zarr (:func:`segment`), predict one scattered part
(:func:`segment_part`, StarDist only) and join the parts (:func:`join_parts`).
Submodules are imported when called, so importing the package stays cheap.
"""

from __future__ import annotations

import json
from pathlib import Path

from snakescope.errors import InputError

__all__ = ["join_parts", "load_model", "segment", "segment_part"]


def load_model(folder: str | Path):
    """The model in ``folder``, loaded once for any number of images: a U-Net
    (:class:`snakescope.segmentation.unet.UNet`) when its config.json says
    ``snakescope-unet/...``, else a StarDist model (trained here or published)."""
    config = Path(folder) / "config.json"
    try:
        fmt = str(json.loads(config.read_text()).get("format", ""))
    except (OSError, ValueError, AttributeError):
        fmt = ""  # the loader names the problem
    if fmt.startswith("snakescope-unet/"):
        from snakescope.segmentation.unet import load_unet

        return load_unet(folder)
    from snakescope.segmentation.stardist import load_model as load_stardist

    return load_stardist(folder)


def _is_unet(model, settings) -> bool:
    from snakescope.segmentation.unet import UNet

    unet = isinstance(model, UNet)
    if unet != (settings.method == "unet"):
        folder = model.model_dir if unet else model.logdir
        raise InputError(folder, f"is a {'U-Net' if unet else 'StarDist'} model but segmentation.method is "
                                 f"{settings.method}")
    return unet


def segment(model, image_path, out_path, settings, *, channel: int) -> dict:
    """Instance labels of every frame of an NGFF image into ``out_path`` (labels.ome.zarr;
    the U-Net's class map beside them), with a model from :func:`load_model` and the
    ``segmentation`` settings (:class:`snakescope.settings.Segmentation`)."""
    if _is_unet(model, settings):
        from snakescope.segmentation.unet import predict_unet

        return predict_unet(model, image_path, out_path, settings, channel=channel)
    from snakescope.segmentation.stardist import predict_stardist

    return predict_stardist(model, image_path, out_path, settings, channel=channel)


def segment_part(model, image_path, out_path, settings, *, part: int, n_parts: int, channel: int) -> dict:
    """One job of a scattered (StarDist) segmentation: the ``part``-th of ``n_parts`` shares
    of every frame's blocks, into a part array that :func:`join_parts` joins."""
    if _is_unet(model, settings):
        raise InputError("segmentation.scatter", "only StarDist predictions can be scattered (method is unet)")
    from snakescope.segmentation.stardist import predict_stardist_part

    return predict_stardist_part(model, image_path, out_path, settings, part=part, n_parts=n_parts, channel=channel)


def join_parts(part_paths, image_path, out_path, *, channel: int) -> dict:
    """The parts of a scattered segmentation joined into labels.ome.zarr equal to one job's."""
    from snakescope.blockwise.instances import join_parts as join

    return join(part_paths, image_path, out_path, channel=channel)
