"""Image restoration: Noise2Void (self-supervised) and CARE (supervised), trained on patches
of normalized OME-NGFF images and applied block by block.

``patches`` (training data, N2V masking with optional structN2V blind spots, CARE targets
brought to their images' intensity scale), ``train`` (N2V and CARE through the training
harness), ``models`` (checking, loading, blockwise prediction, optionally averaged over the
8 flips/rotations), ``metrics`` (PSNR/SSIM against a clean target, plain and after an
affine fit). Importable in both environments: the n2v one (N2V) and the main one
(CARE); TensorFlow, csbdeep and n2v are imported only where a model is built or loaded.
"""

from snakescope.restoration.metrics import restoration_metrics
from snakescope.restoration.models import LoadedModel, check_model, load_model, predict, predict_array
from snakescope.restoration.patches import Source, as_source
from snakescope.restoration.train import train_care, train_n2v

__all__ = ["LoadedModel", "Source", "as_source", "check_model", "load_model", "predict", "predict_array",
           "restoration_metrics", "train_care", "train_n2v"]
