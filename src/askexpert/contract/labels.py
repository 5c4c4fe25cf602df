"""The ids and names every side of the system agrees on (the standard library only)."""

from typing import Literal, get_args

OTHER = -1  # an expert's answer "not one of my classes", as a global class id on the wire and in routing
OTHER_NAME = "other"  # the name of that output
GENERAL = "general"  # the expert id under which a server serves the general model (the full-offload baseline)

ConfidenceRule = Literal["max-prob", "margin", "entropy"]  # the scores of the generalist's probabilities alone
Confidence = Literal[ConfidenceRule, "learned"]  # how the edge scores its own answer ("learned": a fitted deferral
# rule, which only a bundle built with --deferral learned carries)
CONFIDENCE_RULES = get_args(ConfidenceRule)
Fallback = Literal["other", "other-or-less-confident"]  # when an expert's answer gives way to the edge's
