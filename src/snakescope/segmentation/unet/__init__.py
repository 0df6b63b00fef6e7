"""3-class U-Net segmentation (background / contour / body) with seeded-watershed instances.

The classic alternative to StarDist for objects that are not star-convex: a U-Net predicts,
for every pixel, the probability of background, of the inner contour of an object and of
its body; instances are the connected bodies, grown back over the contour by a watershed.
Touching objects are separated because each keeps its own one-pixel inner contour. A typed
U-Net (``segmentation.unet.types``: K >= 2 cell types) predicts each type's contour and
body (2K + 1 classes); instances come from all bodies together and each object takes the
type most of its pixels have.

The package, by concern:

* :mod:`.targets`: the three-class targets from dense instance labels (2D or 3D, any
  integer dtype, as napari saves them), checked training pairs, and the pixel-class
  confusion of a class map (:func:`class_confusion`);
* :mod:`.types`: the classes of K cell types, each object's type from a type image or a
  ``label,type`` table (training, evaluation) or from a predicted class map;
* :mod:`.network`: architecture, Keras model, pooling grid and receptive field, and the
  loaded model (:class:`UNet`, :func:`load_unet`);
* :mod:`.train`: :func:`train_unet` (random augmented patches, class-weighted
  cross-entropy, the shared training harness, thresholds tuned on validation images);
* :mod:`.predict`: probabilities block by block through the dense engine (equal to
  whole-image prediction, bounded memory), instances, the class map, and
  :func:`predict_unet` into NGFF labels.

TensorFlow/Keras are imported inside functions only, so label and post-processing helpers
stay cheap to import. The names below are the package's public API.
"""

from snakescope.segmentation.unet.network import (ARCHITECTURE_KEYS, DEFAULT_POSTPROCESSING, FORMAT, UNet,
                                                  architecture_for, build_keras_model, divisor, load_unet,
                                                  receptive_field_radius)
from snakescope.segmentation.unet.predict import (MAX_BLOCK, predict_instances, predict_probabilities, predict_unet,
                                                  probabilities_to_classes, probabilities_to_instances)
from snakescope.segmentation.unet.targets import (CLASS_NAMES, check_labels, check_pair, class_confusion,
                                                  class_weights_from_frequencies, labels_to_classes,
                                                  normalize_percentile, read_pairs)
from snakescope.segmentation.unet.train import AUGMENT, patch_batches, train_unet
from snakescope.segmentation.unet.types import class_names_for, class_types, object_type_image, object_types

__all__ = ["AUGMENT", "CLASS_NAMES", "ARCHITECTURE_KEYS", "DEFAULT_POSTPROCESSING", "FORMAT",
           "MAX_BLOCK", "UNet", "architecture_for", "build_keras_model", "check_labels", "check_pair",
           "class_confusion", "class_names_for", "class_types", "class_weights_from_frequencies", "divisor",
           "labels_to_classes", "load_unet", "normalize_percentile", "object_type_image", "object_types",
           "patch_batches", "predict_instances", "predict_probabilities", "predict_unet", "probabilities_to_classes",
           "probabilities_to_instances", "read_pairs", "receptive_field_radius", "train_unet"]
