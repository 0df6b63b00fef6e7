"""Run in .venv/check (other projects' readers and validators), never imported by the tests:
``python interop_check.py PATH...`` prints, as JSON, what each reader makes of each path.

For an OME-Zarr image: ome-zarr-models' v04 validator, napari-ome-zarr's reader (the layers
it returns) and bioio-ome-zarr (dims, shape, pixel sizes). For a labels group: the
validator and napari; for a label image: all three. Every failure is reported as text.
"""

import json
import sys
import warnings

import zarr


def kind_of(path: str) -> str:
    attrs = zarr.open_group(path, mode="r").attrs.asdict()
    if "image-label" in attrs:
        return "label"
    if "labels" in attrs and "multiscales" not in attrs:
        return "labels"
    return "image"


def check(path: str) -> dict:
    result = {"kind": kind_of(path)}
    try:
        from ome_zarr_models.v04 import Image, ImageLabel, Labels

        model = {"image": Image, "labels": Labels, "label": ImageLabel}[result["kind"]]
        model.from_zarr(zarr.open_group(path, mode="r"))
        result["ome_zarr_models"] = "ok"
    except Exception as exc:  # noqa: BLE001
        result["ome_zarr_models"] = f"{type(exc).__name__}: {exc}"[:500]
    try:
        from napari_ome_zarr._reader import napari_get_reader

        reader = napari_get_reader(path)
        layers = reader(path) if reader else []
        result["napari"] = [[layer[2] if len(layer) > 2 else "image", list(layer[0][0].shape)] for layer in layers]
    except Exception as exc:  # noqa: BLE001
        result["napari"] = f"{type(exc).__name__}: {exc}"[:500]
    if result["kind"] != "labels":
        try:
            import bioio_ome_zarr
            from bioio import BioImage

            image = BioImage(path, reader=bioio_ome_zarr.Reader)
            sizes = image.physical_pixel_sizes
            result["bioio"] = {"dims": image.dims.order, "shape": list(image.shape),
                               "pixel_sizes": [sizes.Z, sizes.Y, sizes.X]}
        except Exception as exc:  # noqa: BLE001
            result["bioio"] = f"{type(exc).__name__}: {exc}"[:500]
    return result


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    out = {path: check(path) for path in sys.argv[1:]}
    print("INTEROP-JSON " + json.dumps(out))
