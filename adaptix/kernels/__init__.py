"""The exit decision: a head's logits to prediction, confidence, score and exit mask.

`exit_decision_reference` (pure torch) is the specification; `exit_decision` runs the fused
Triton kernel where it can and the reference otherwise; `ExitDecider` prepares one exit's rule
once for repeated calls (the runtime's path). Importing this package never imports
triton.
"""

from adaptix.kernels.decider import ExitDecider
from adaptix.kernels.dispatch import exit_decision, triton_unavailable_reasons
from adaptix.kernels.reference import exit_decision_reference
from adaptix.kernels.types import Backend, ExitDecision, ExitKind

__all__ = [
    "Backend",
    "ExitDecider",
    "ExitDecision",
    "ExitKind",
    "exit_decision",
    "exit_decision_reference",
    "triton_unavailable_reasons",
]
