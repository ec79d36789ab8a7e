"""adaptix: plugin-based adaptive inference (early exiting with performance control) for PyTorch.

The public API; everything else is reachable through its submodules.
"""

from adaptix._version import __version__
from adaptix.allocator import tune_cpu_allocator
from adaptix.calibration import Calibration, calibrate
from adaptix.certificate import Certificate, CertificateWarning
from adaptix.errors import AdaptixError, CalibrationError, ConfigError, PluginError, ValidationError
from adaptix.guarantee import Certifier, budget, guarantee, verify_certificate
from adaptix.hookspecs import hookimpl
from adaptix.model import MultiExitModel, build_model
from adaptix.monitor import (
    ReferenceCounts,
    ShiftAlarm,
    ShiftMonitor,
    ShiftReport,
    ShiftTest,
    ShiftWarning,
)
from adaptix.plugins import get_plugin_manager
from adaptix.policy import ExitPolicy, policy
from adaptix.runtime import EarlyExitRunner, RunnerOutput
from adaptix.simulate import Frontier, FrontierPoint, SimulationResult, simulate, sweep
from adaptix.statistics import ThresholdCounts, count_thresholds
from adaptix.survivors import SurvivorCounts, calibrate_survivors, count_survivors
from adaptix.trace import Trace
from adaptix.training import TrainResult, train_exits

__all__ = [
    "AdaptixError",
    "Calibration",
    "CalibrationError",
    "Certificate",
    "CertificateWarning",
    "Certifier",
    "ConfigError",
    "EarlyExitRunner",
    "ExitPolicy",
    "Frontier",
    "FrontierPoint",
    "MultiExitModel",
    "PluginError",
    "ReferenceCounts",
    "RunnerOutput",
    "ShiftAlarm",
    "ShiftMonitor",
    "ShiftReport",
    "ShiftTest",
    "ShiftWarning",
    "SimulationResult",
    "SurvivorCounts",
    "ThresholdCounts",
    "Trace",
    "TrainResult",
    "ValidationError",
    "__version__",
    "budget",
    "build_model",
    "calibrate",
    "calibrate_survivors",
    "count_survivors",
    "count_thresholds",
    "get_plugin_manager",
    "guarantee",
    "hookimpl",
    "policy",
    "simulate",
    "sweep",
    "train_exits",
    "tune_cpu_allocator",
    "verify_certificate",
]
