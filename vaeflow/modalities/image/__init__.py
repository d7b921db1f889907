"""Images: MNIST-format data sets (Fashion-MNIST by default), conv encoders and decoders."""

from vaeflow.modalities.base import Modality
from vaeflow.modalities.image.data import ImageData
from vaeflow.modalities.image.task import ImageTask
from vaeflow.registry import MODALITIES

_data = ImageData()
MODALITIES.register("image")(Modality("image", _data, ImageTask(_data)))
