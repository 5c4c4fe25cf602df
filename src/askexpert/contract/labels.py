"""The ids and names every side of the system agrees on (the standard library only)."""

from typing import Literal

OTHER = -1  # an expert's answer "not one of my classes", as a global class id on the wire and in routing
OTHER_NAME = "other"  # the name of that output
GENERAL = "general"  # the expert id under which a server serves the general model (the full-offload baseline)

Fallback = Literal["other", "other-or-less-confident"]  # when an expert's answer gives way to the edge's
