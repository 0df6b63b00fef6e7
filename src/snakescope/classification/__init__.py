"""Object classification: sparse point annotations -> patches -> a Keras CNN -> classes.

In the order a facility uses it: annotations (napari points CSVs, patch folders:
:mod:`snakescope.io.annotations`), ``patches`` (cutting and normalizing patches, the
training data of a sample or a patch folder), the split
(:func:`snakescope.training.splits.make_or_load_stratified_split`), ``model`` (the network,
its config, transfer learning), ``train`` (training through the harness), ``predict``
(load once, classify the objects of many images) and ``metrics`` (held-out evaluation,
class-truth points against segmented objects, pooling over samples). Keras and TensorFlow
are imported only where a model is built or loaded.
"""

from snakescope.classification.metrics import (evaluate, evaluate_annotations, evaluate_sample,
                                               match_points_to_objects, object_class_metrics, plot_object_confusion,
                                               pool_classification_metrics, read_metrics_table,
                                               write_training_confusion)
from snakescope.classification.model import build_classifier, classifier_class_names
from snakescope.classification.patches import (TrainingPatches, concatenate_patches, extract_patches, patch_size_for,
                                               training_patches_from_folder, training_patches_from_points)
from snakescope.classification.predict import LoadedClassifier, classify_objects, load_classifier, predict_patches
from snakescope.classification.train import train_classifier

__all__ = ["LoadedClassifier", "TrainingPatches", "build_classifier", "classifier_class_names", "classify_objects",
           "concatenate_patches", "evaluate", "evaluate_annotations", "evaluate_sample", "extract_patches",
           "load_classifier", "match_points_to_objects", "object_class_metrics", "patch_size_for",
           "plot_object_confusion", "pool_classification_metrics", "predict_patches", "read_metrics_table",
           "train_classifier", "training_patches_from_folder", "training_patches_from_points",
           "write_training_confusion"]
