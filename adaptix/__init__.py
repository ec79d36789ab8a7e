"""adaptix: plugin-based adaptive inference (early exiting with performance control) for PyTorch.

The public API; everything else is reachable through its submodules.
"""

from adaptix._version import __version__
from adaptix.core.calibration import Calibration
from adaptix.core.trace import Trace
from adaptix.errors import AdaptixError, CalibrationError, ConfigError, PluginError, ValidationError
from adaptix.hookspecs import hookimpl
from adaptix.offline.calibrate import calibrate
from adaptix.offline.certificate import Certificate, CertificateWarning
from adaptix.offline.frontier import Frontier, FrontierPoint
from adaptix.offline.guarantee import Certifier, budget, guarantee, verify_certificate
from adaptix.offline.policy import ExitPolicy, policy
from adaptix.offline.simulate import SimulationResult, simulate, sweep
from adaptix.offline.statistics import ThresholdCounts, count_thresholds
from adaptix.offline.survivors import SurvivorCounts, calibrate_survivors, count_survivors
from adaptix.online.allocator import tune_cpu_allocator
from adaptix.online.decoder import (
    DecoderModel,
    KVCache,
    build_decoder,
    compact_token_traces,
    token_trace,
    token_traces,
    vocabulary_calibration,
)
from adaptix.online.generate import EarlyExitGenerator, GenerationOutput
from adaptix.online.lm_adapters import AdapterRecipe, train_adapters
from adaptix.online.model import MultiExitModel, build_model
from adaptix.online.monitor import (
    ReferenceCounts,
    ShiftAlarm,
    ShiftMonitor,
    ShiftReport,
    ShiftTest,
    ShiftWarning,
)
from adaptix.online.runtime import EarlyExitRunner, RunnerOutput
from adaptix.online.sequence import SequenceCertificate, certify_sequences
from adaptix.online.speculative import SelfSpeculativeGenerator, SpeculativeOutput
from adaptix.online.training import TrainResult, train_exits
from adaptix.plugins import get_plugin_manager

__all__ = [
    "AdapterRecipe",
    "AdaptixError",
    "Calibration",
    "CalibrationError",
    "Certificate",
    "CertificateWarning",
    "Certifier",
    "ConfigError",
    "DecoderModel",
    "EarlyExitGenerator",
    "EarlyExitRunner",
    "ExitPolicy",
    "Frontier",
    "FrontierPoint",
    "GenerationOutput",
    "KVCache",
    "MultiExitModel",
    "PluginError",
    "ReferenceCounts",
    "RunnerOutput",
    "SelfSpeculativeGenerator",
    "SequenceCertificate",
    "ShiftAlarm",
    "ShiftMonitor",
    "ShiftReport",
    "ShiftTest",
    "ShiftWarning",
    "SimulationResult",
    "SpeculativeOutput",
    "SurvivorCounts",
    "ThresholdCounts",
    "Trace",
    "TrainResult",
    "ValidationError",
    "__version__",
    "budget",
    "build_decoder",
    "build_model",
    "calibrate",
    "calibrate_survivors",
    "certify_sequences",
    "compact_token_traces",
    "count_survivors",
    "count_thresholds",
    "get_plugin_manager",
    "guarantee",
    "hookimpl",
    "policy",
    "simulate",
    "sweep",
    "token_trace",
    "token_traces",
    "train_adapters",
    "train_exits",
    "tune_cpu_allocator",
    "verify_certificate",
    "vocabulary_calibration",
]
