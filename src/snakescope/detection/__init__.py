"""Object detection with boxes: a detector trained from bounding boxes alone that finds and
classifies cells or events fast (e.g. for smart microscopy), blockwise on large images.

The detector is CenterNet-style (one heatmap per class, box size and centre offset per
cell) on the project's U-Net trunk (csbdeep's ``unet_block``), trained from scratch on the
CPU in minutes; KerasHub's detectors (RetinaNet with a ResNet-50 FPN, D-FINE) are built for
fine-tuning pretrained backbones, which nothing here may download.

The package, by concern:

* :mod:`.network`: the Keras model, its grid, halo and model folder (:func:`load_detector`);
* :mod:`.targets`: heatmap and box targets from boxes, augmented random patches;
* :mod:`.train`: :func:`train_detector` through the shared training harness;
* :mod:`.predict`: peaks to boxes block by block (:func:`predict_boxes`), NMS, and
  :func:`detect` for NGFF images into box files;
* :mod:`.metrics`: IoU, NMS, COCO-style mAP at IoU 0.5 and 0.5:0.95.

The settings are the config's ``detection`` section (:class:`snakescope.settings.Detection`).
Box files (YOLO, napari shapes, plain CSV) and the boxes of instance segmentations are in
:mod:`snakescope.io.boxes`. TensorFlow/Keras are imported inside functions only.
"""

from snakescope.detection.metrics import (COCO_THRESHOLDS, box_iou, detection_counts, match_detections,
                                          mean_average_precision, nms)
from snakescope.detection.network import FORMAT, Detector, build_keras_model, halo, load_detector
from snakescope.detection.predict import DETECTION_FILES, decode_peaks, detect, predict_boxes
from snakescope.detection.targets import patch_batches, render_targets
from snakescope.detection.train import detection_loss, train_detector

__all__ = ["COCO_THRESHOLDS", "DETECTION_FILES", "FORMAT", "Detector", "box_iou",
           "build_keras_model", "decode_peaks", "detect", "detection_counts", "detection_loss",
           "halo", "load_detector", "match_detections", "mean_average_precision", "nms", "patch_batches",
           "predict_boxes", "render_targets", "train_detector"]
