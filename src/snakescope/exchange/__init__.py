"""Exchange with other tools: bioimage.io model packages (:mod:`.bioimageio`: export of every
model the workflow trains, import of published StarDist, N2V and CARE packages) and tracks
that napari and current trackers open (:mod:`.tracks`: napari's tracks layer, GEFF).

Submodules import TensorFlow and Keras inside functions only, so importing this package is
cheap in every environment.
"""

from snakescope.exchange.bioimageio import export_package, import_package, package_kind, read_package
from snakescope.exchange.tracks import read_napari_tracks, write_geff, write_napari_tracks

__all__ = ["export_package", "import_package", "package_kind", "read_napari_tracks", "read_package", "write_geff",
           "write_napari_tracks"]
