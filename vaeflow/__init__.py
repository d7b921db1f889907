"""vaeflow: distributed VAE training for images, time series and molecules (DVC, Ray Train, MLflow)."""

__version__ = "0.1.0"
