"""Run in .venv/check (other projects' readers and validators), never imported by the tests:
``python interop_check.py [--MODE] PATH... [--MODE PATH...]`` prints, as JSON, what each reader
makes of each path (each path checked as the mode before it says).

Without a mode (or ``--ngff``), OME-Zarr: ome-zarr-models' v04 validator, napari-ome-zarr's
reader (the layers it returns) and bioio-ome-zarr (dims, shape, pixel sizes) for an image; the
validator and napari for a labels group; all three for a label image. ``--bioimageio``:
bioimageio.spec's validation of a model package (status, errors, warnings with their
severity). ``--geff``: geff's structure validator and its reader (with the tracklet and
lineage checks), counts and degrees. ``--napari-tracks``: napari's Tracks layer built from a
CSV and its ``<stem>_graph.json`` (snakescope's napari tracks files). Every failure is
reported as text.
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


def check_bioimageio(path: str) -> dict:
    from bioimageio.spec import load_description

    try:
        summary = load_description(path, format_version="latest").validation_summary
    except Exception as exc:  # noqa: BLE001
        return {"status": f"{type(exc).__name__}: {exc}"[:500]}
    return {"status": summary.status, "format_version": summary.format_version,
            "errors": [f"{'.'.join(map(str, e.loc))}: {e.msg}"[:300] for d in summary.details for e in d.errors],
            "warnings": [{"loc": ".".join(map(str, w.loc)), "msg": str(w.msg)[:300], "severity": int(w.severity)}
                         for d in summary.details for w in d.warnings]}


def check_geff(path: str) -> dict:
    import geff
    from geff.validate.data import ValidationConfig

    try:
        geff.validate_structure(path)
        graph, metadata = geff.read(path, data_validation=ValidationConfig(graph=True, lineage=True, tracklet=True))
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"[:800]}
    nodes = list(graph.nodes(data=True))
    return {"n_nodes": graph.number_of_nodes(), "n_edges": graph.number_of_edges(),
            "directed": graph.is_directed(), "geff_version": metadata.geff_version,
            "axes": [[a.name, a.type, a.unit] for a in metadata.axes or []],
            "node_props": sorted(nodes[0][1]) if nodes else [],
            "n_divisions": sum(1 for n in graph.nodes if graph.out_degree(n) >= 2),
            "track_node_props": metadata.track_node_props,
            "nodes": {str(n): {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in d.items()}
                      for n, d in nodes[:2000]}}


def check_napari_tracks(path: str) -> dict:
    import numpy as np
    import pandas as pd

    try:
        from napari.layers import Tracks

        data = pd.read_csv(path).to_numpy(dtype=float)
        graph_file = path[: -len(".csv")] + "_graph.json" if path.endswith(".csv") else path + "_graph.json"
        with open(graph_file) as f:
            graph = {int(k): v for k, v in json.load(f).items()}
        layer = Tracks(data, graph=graph, name="tracks")
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"[:800]}
    return {"ndim": int(layer.ndim), "n_points": int(len(layer.data)),
            "n_tracks": int(len(np.unique(layer.data[:, 0]))),
            "graph": {str(k): [int(p) for p in v] for k, v in layer.graph.items()},
            "extent": [list(map(float, row)) for row in np.asarray(layer.extent.data)]}


def check_napari_shapes(path: str) -> dict:
    """napari's own CSV reader and its Shapes layer on a boxes file: the rectangles' corners."""
    import numpy as np

    try:
        from napari.layers import Shapes
        from napari_builtins.io._read import csv_to_layer_data

        data, meta, kind = csv_to_layer_data(path, require_type="shapes")
        layer = Shapes(data, shape_type=meta["shape_type"], name="boxes")
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"[:800]}
    return {"layer_type": kind, "n_shapes": int(layer.nshapes), "shape_types": sorted(set(layer.shape_type)),
            "corners": [[np.min(d, axis=0).tolist(), np.max(d, axis=0).tolist()] for d in layer.data]}


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    modes = {"--ngff": check, "--bioimageio": check_bioimageio, "--geff": check_geff,
             "--napari-tracks": check_napari_tracks, "--napari-shapes": check_napari_shapes}
    checker, out = check, {}
    for arg in sys.argv[1:]:
        if arg in modes:
            checker = modes[arg]
        else:
            out[arg] = checker(arg)
    print("INTEROP-JSON " + json.dumps(out))
