"""Time series: windows of long series (TimeGAN's sets) or whole UCR/UEA series, recurrent and conv1d models."""

from vaeflow.modalities.base import Modality
from vaeflow.modalities.timeseries.config import TimeSeriesDataConfig, TimeSeriesEvaluateConfig, TimeSeriesSampleConfig
from vaeflow.modalities.timeseries.data import AeonClassification, CsvSeries, TimeSeriesData, WindowedNpzSeries
from vaeflow.modalities.timeseries.task import TimeSeriesTask
from vaeflow.registry import MODALITIES

_data = TimeSeriesData()
MODALITIES.register("timeseries")(Modality(
    "timeseries", _data, TimeSeriesTask(_data),
    data_config=TimeSeriesDataConfig, sample_config=TimeSeriesSampleConfig, evaluate_config=TimeSeriesEvaluateConfig,
    dataset_type=(CsvSeries, WindowedNpzSeries, AeonClassification),
))
