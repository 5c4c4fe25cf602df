"""The ids and names every side of the system agrees on (the standard library only)."""

from typing import Literal

OTHER = -1  # an expert's answer "not one of my classes", as a global class id on the wire and in routing
OTHER_NAME = "other"  # the name of that output
GENERAL = "general"  # the expert id under which a server serves the general model (the full-offload baseline)

Confidence = Literal["max-prob", "margin", "entropy", "learned"]  # how the edge scores its own answer
CONFIDENCE_RULES = ("max-prob", "margin", "entropy")  # the scores of the generalist alone ("learned" needs a fitted
# deferral rule, which only a bundle built with --deferral learned carries)
Fallback = Literal["other", "other-or-less-confident"]  # when an expert's answer gives way to the edge's
