"""Training: one loop (``engine.fit``), evaluation, resumable state, and the generalist recipe."""

from askexpert.devices import resolve_device
from askexpert.training.engine import FitResult, fit
from askexpert.training.evaluate import classification_metrics, predict_logits
from askexpert.training.generalist import TrainedModel, train_generalist

__all__ = ["FitResult", "fit", "resolve_device", "classification_metrics", "predict_logits",
           "TrainedModel", "train_generalist"]
