"""Images: MNIST-format data sets (Fashion-MNIST by default), conv encoders and decoders."""

from vaeflow.modalities.base import Modality
from vaeflow.modalities.image.config import ImageDataConfig, ImageEvaluateConfig, ImageSampleConfig
from vaeflow.modalities.image.data import IdxImageDataset, ImageData
from vaeflow.modalities.image.task import ImageTask
from vaeflow.registry import MODALITIES

_data = ImageData()
MODALITIES.register("image")(Modality(
    "image", _data, ImageTask(_data),
    data_config=ImageDataConfig, sample_config=ImageSampleConfig, evaluate_config=ImageEvaluateConfig,
    dataset_type=IdxImageDataset,
))
