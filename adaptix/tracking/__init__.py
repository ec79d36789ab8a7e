"""Experiment tracking with MLflow: a failure-tolerant `Tracker` and `log_frontier`.

MLflow is optional (``pip install 'adaptix[mlflow]'``) and imported only when a `Tracker` is
built: ``import adaptix`` and ``import adaptix.tracking`` work without it, and building a
`Tracker` then raises `AdaptixError` with the install command.

Log a sweep, one run per (criterion, threshold), under a parent run::

    import adaptix
    from adaptix.tracking import Tracker, log_frontier

    calibration = adaptix.calibrate(calibration_trace)
    frontier = adaptix.sweep(test_trace, ["confidence", "pcee", "pcee_ws"], calibration=calibration)

    tracker = Tracker("adaptix", "sqlite:///mlflow.db")
    with tracker.run("my-sweep", params={"seed": 0}) as parent:
        log_frontier(
            frontier, tracker=tracker, parent=parent, model="resnet",
            calibration=calibration, params={"seed": 0},
        )
    print(tracker.failures or "logged")

then browse the runs with::

    mlflow ui --backend-store-uri sqlite:///mlflow.db

Certified policies (`adaptix.guarantee`) go in with `log_certified`: one run per policy, with
its certificate as params and the point it realised on test data as metrics; policies on
survivor calibrations (`adaptix.offline.survivors`) with `log_survivors`, one run per δ with its own
calibration's checksum.

A tracking store that cannot be reached or written never stops the job: the first failure is
recorded in ``tracker.failures``, warned about once, and later calls are skipped. Pass
``strict=True`` to `Tracker` to raise instead.
"""

from adaptix.tracking.frontier import (
    CERTIFICATE_TAG,
    log_certified,
    log_frontier,
    log_survivors,
)
from adaptix.tracking.tracker import (
    INSTALL_HINT,
    PARENT_TAG,
    UNDEFINED_METRICS_TAG,
    Tracker,
    TrackingWarning,
    default_tracking_uri,
)

__all__ = [
    "CERTIFICATE_TAG",
    "INSTALL_HINT",
    "PARENT_TAG",
    "UNDEFINED_METRICS_TAG",
    "Tracker",
    "TrackingWarning",
    "default_tracking_uri",
    "log_certified",
    "log_frontier",
    "log_survivors",
]
