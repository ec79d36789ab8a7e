"""Decisions on stored logits: policies and their certificates, counts, simulation and sweeps,
certification, calibration with a registered calibrator, and the metrics of control.

Import from the modules themselves (``adaptix.offline.simulate``, ``adaptix.offline.policy``,
...); this package re-exports nothing, so that no function shadows its module.
"""
