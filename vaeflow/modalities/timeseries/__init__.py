"""Time series: windows of long series (TimeGAN's sets) or whole UCR/UEA series, recurrent and conv1d models."""

from vaeflow.modalities.base import Modality
from vaeflow.modalities.timeseries.data import TimeSeriesData
from vaeflow.modalities.timeseries.task import TimeSeriesTask
from vaeflow.registry import MODALITIES

_data = TimeSeriesData()
MODALITIES.register("timeseries")(Modality("timeseries", _data, TimeSeriesTask(_data)))
