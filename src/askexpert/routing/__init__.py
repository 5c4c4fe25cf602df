"""Routing: temperature calibration, confidence, the Top-k expert policy, thresholds, and offline
system evaluation. Tensors in, decisions out: nothing here does I/O."""

from askexpert.routing.calibration import expected_calibration_error, fit_temperature
from askexpert.routing.policy import (
    OTHER,
    RouteDecision,
    Router,
    RoutingPolicy,
    confidence_scores,
    finalize,
    membership_matrix,
    route,
)
from askexpert.routing.system import ExpertAnswers, system_metrics
from askexpert.routing.thresholds import tau_for_accuracy, tau_for_offload

__all__ = [
    "expected_calibration_error", "fit_temperature", "OTHER", "RouteDecision", "Router", "RoutingPolicy",
    "confidence_scores", "finalize", "membership_matrix", "route", "ExpertAnswers", "system_metrics",
    "tau_for_accuracy", "tau_for_offload",
]  # fmt: skip
