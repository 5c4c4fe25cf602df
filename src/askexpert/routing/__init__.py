"""Routing: temperature calibration, confidence, the Top-k expert policy, thresholds, and offline
system evaluation. NumPy arrays in, decisions out: no torch and no I/O here, so the edge device
runs exactly this code next to ONNX Runtime."""

from askexpert.routing.calibration import fit_temperature, softmax
from askexpert.routing.metrics import ExpertAnswers, SystemMetrics, system_metrics
from askexpert.routing.policy import (
    DEFAULT_K,
    OTHER,
    RouteDecision,
    Router,
    RoutingPolicy,
    confidence_scores,
    finalize,
    membership_matrix,
    route,
)
from askexpert.routing.thresholds import ALL, tau_for_accuracy, tau_for_offload

__all__ = [
    "fit_temperature", "softmax", "DEFAULT_K", "OTHER", "RouteDecision", "Router", "RoutingPolicy", "confidence_scores",
    "finalize", "membership_matrix", "route", "ExpertAnswers", "SystemMetrics", "system_metrics", "ALL",
    "tau_for_accuracy", "tau_for_offload",
]  # fmt: skip
