"""Evaluation metrics per modality."""
