"""Models-from-code entry point for MLflow: the logged model is this file, not a pickled object."""

import mlflow.models

from vaeflow.serving import VAEPyfunc

mlflow.models.set_model(VAEPyfunc())
