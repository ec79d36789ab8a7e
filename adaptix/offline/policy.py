"""`ExitPolicy`: a resolved criterion (with its parameters and calibration) and a threshold."""

from __future__ import annotations

import math
import os
import reprlib
from numbers import Real
from pathlib import Path
from typing import Any, NoReturn

import torch
from pydantic_core import PydanticSerializationError
from torch import Tensor

from adaptix import scalars
from adaptix.components import ExitCriterion, build_params
from adaptix.core.calibration import Calibration
from adaptix.core.files import DocumentKind, read_document, write_document
from adaptix.errors import CalibrationError, PluginError, ValidationError
from adaptix.offline.certificate import Certificate
from adaptix.plugins import AdaptixPluginManager, Entry, call_plugin, resolve_manager

_FORMAT = "adaptix.policy"
# Version 2: certificates are bound to their policy (criterion, parameters, threshold,
# calibration) and carry their evidence; version 1 files hold unbound certificates and are
# refused with a message to certify again.
_VERSION = 2
_FIELDS = ("criterion", "params", "threshold", "exits_early", "certificate", "calibration")
#: Policy files: read and written by `adaptix.core.files` (one reader for every kind).
POLICY_FILE = DocumentKind("policy", _FORMAT, {1: _FIELDS, _VERSION: _FIELDS}, "ExitPolicy.save")


class ExitPolicy:
    """When to exit: ``criterion`` fires at a threshold.

    Build it with `adaptix.policy`, or with `adaptix.guarantee` / `adaptix.budget` for a
    certified one. Policies are immutable; `with_threshold` gives a sibling.

    Attributes:
        criterion: the criterion instance (parameters and calibration bound).
        threshold: the validated threshold.
        entry: the registry entry (name, provider) the criterion came from.
        certificate: what `adaptix.guarantee` or `adaptix.budget` certified (None otherwise);
            read-only, attached only through `certified`, which checks that it certifies this
            policy.
        exits_early: False for a policy that sends every input to the last exit (a guarantee
            that could certify nothing); `simulate` and `EarlyExitRunner` honour it. Read-only.
    """

    __slots__ = ("_certificate", "_exits_early", "criterion", "entry", "threshold")

    def __init__(self, criterion: ExitCriterion, threshold: float, entry: Entry[Any]) -> None:
        self.criterion = criterion
        self.entry = entry
        self._certificate: Certificate | None = None
        self._exits_early = True
        value = call_plugin(
            entry, "validate_threshold", type(criterion).validate_threshold, threshold
        )
        threshold_value = _finite_float(value)
        if threshold_value is None:
            self._malformed(
                "validate_threshold", f"the threshold {reprlib.repr(value)}", "a finite real number"
            )
        call_plugin(entry, "check_threshold", criterion.check_threshold, threshold_value)
        self.threshold: float = threshold_value

    @property
    def certificate(self) -> Certificate | None:
        """The certificate this policy carries (see the class docstring)."""
        return self._certificate

    @property
    def exits_early(self) -> bool:
        """Whether the policy may exit before the last exit (see the class docstring)."""
        return self._exits_early

    @property
    def name(self) -> str:
        """The criterion's registry name."""
        return self.entry.name

    @property
    def calibration(self) -> Calibration | None:
        """The calibration the criterion reads, if any."""
        return self.criterion.calibration

    def with_threshold(self, threshold: float) -> ExitPolicy:
        """The same criterion at another threshold (validated), without any certificate."""
        return ExitPolicy(self.criterion, threshold, self.entry)

    def certified(self, certificate: Certificate, *, exits_early: bool = True) -> ExitPolicy:
        """A copy of this policy that carries ``certificate`` (what `adaptix.guarantee` returns).

        Args:
            certificate: the statement and its evidence, computed for this policy.
            exits_early: False to send every input to the last exit (nothing was certified).

        Raises:
            ValidationError: ``certificate`` is not a `Certificate`, or it certifies another
                criterion, parameters, calibration or threshold, or ``exits_early`` is not what
                it allows (early exits exactly when something was certified, or for a budget).
        """
        if not isinstance(certificate, Certificate):
            raise ValidationError(
                f"expected an adaptix.Certificate, got {type(certificate).__name__}. Certify "
                "with adaptix.guarantee or adaptix.budget."
            )
        early = scalars.flag(exits_early, "exits_early")
        certificate.check_policy(self, early)
        copy = ExitPolicy(self.criterion, self.threshold, self.entry)
        copy._certificate = certificate
        copy._exits_early = early
        return copy

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the policy to one self-contained JSON file, atomically: criterion, parameters,
        threshold, certificate and the calibration it reads (with its checksum).

        Raises:
            ValidationError: ``path`` cannot be written (a file already there is kept) or the
                criterion's parameters do not serialise to JSON.
        """
        try:
            params = self.criterion.params.model_dump(mode="json")
        except PydanticSerializationError as err:
            raise ValidationError(
                f"expected criterion parameters that serialise to JSON to save the policy, got "
                f"{self.criterion.params!r} ({err})."
            ) from err
        calibration = self.calibration
        payload = {
            "criterion": self.name,
            "params": params,
            "threshold": self.threshold,
            "exits_early": self.exits_early,
            "certificate": None if self.certificate is None else self.certificate.to_dict(),
            "calibration": None if calibration is None else calibration.to_document(),
        }
        return write_document(path, POLICY_FILE, _VERSION, payload)

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], *, plugins: AdaptixPluginManager | None = None
    ) -> ExitPolicy:
        """Read a policy written by `save`: the criterion is resolved again (so its plugin must
        be installed), the calibration and the certificate verified.

        Raises:
            ValidationError: the file is missing, corrupt or of another format.
            PluginError: its criterion is not installed.
        """
        source = Path(path)
        version, payload = read_document(source, POLICY_FILE)
        if version == 1 and payload["certificate"] is not None:
            raise ValidationError(
                f"policy file {source} holds a certificate of format version 1, which is not "
                "bound to its policy and cannot be trusted. Certify the policy again "
                "(adaptix.guarantee or adaptix.budget) and save it."
            )
        if not isinstance(payload["params"], dict) or not isinstance(payload["criterion"], str):
            raise ValidationError(f"policy file {source} has malformed criterion fields.")
        calibration = (
            None
            if payload["calibration"] is None
            else Calibration.from_document(payload["calibration"], source=str(source))
        )
        threshold: Any = payload["threshold"]
        loaded = policy(
            payload["criterion"],
            threshold,
            calibration,
            plugins=plugins,
            **payload["params"],
        )
        if payload["certificate"] is None:
            if payload["exits_early"] is not True:
                raise ValidationError(
                    f"policy file {source} says exits_early={payload['exits_early']!r} without "
                    "a certificate: only a certificate that certified nothing sends every input "
                    "to the last exit. The file was edited: save the policy again."
                )
            return loaded
        if not isinstance(payload["exits_early"], bool):
            raise ValidationError(f"policy file {source} has a malformed 'exits_early'.")
        certificate = Certificate.from_dict(payload["certificate"])
        try:
            return loaded.certified(certificate, exits_early=payload["exits_early"])
        except ValidationError as err:
            raise ValidationError(
                f"policy file {source} holds a certificate that does not certify its policy "
                f"({err}). It was edited after it was saved: certify the policy again."
            ) from err

    def fires(self, score: Tensor) -> Tensor:
        """Boolean mask: where ``score`` (compared exactly, in float64) triggers an exit.

        All False for a policy that does not exit early (`exits_early`).
        """
        if not self.exits_early:
            return torch.zeros(score.shape, dtype=torch.bool, device=score.device)
        return fires(score, self.threshold, self.criterion.direction)

    def check_model(self, num_exits: int, num_classes: int) -> None:
        """Raise `AdaptixError` unless this policy fits a model with that many exits/classes."""
        call_plugin(self.entry, "check_model", self.criterion.check_model, num_exits, num_classes)

    def start(self, batch_size: int, device: torch.device) -> Any:
        """The criterion's state before exit 0 (plugin errors are chained)."""
        return call_plugin(self.entry, "start", self.criterion.start, batch_size, device)

    def select_state(self, state: Any, keep: Tensor) -> Any:
        """The criterion's state of the rows in ``keep`` (plugin errors are chained)."""
        return call_plugin(self.entry, "select_state", self.criterion.select_state, state, keep)

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        """The criterion's score for the rows at one exit, checked: ``[n]`` on the logits'
        device (plugin errors are chained)."""
        result = call_plugin(self.entry, "score", self.criterion.score, logits, exit_index, state)
        if not (isinstance(result, tuple) and len(result) == 2):
            self._malformed("score", f"a {type(result).__name__}", "a pair (scores, state)")
        self._check_scores("score", result[0], logits.shape[:1], logits.device)
        return result

    def scores(self, logits: Tensor) -> Tensor:
        """Scores of every exit for stored logits ``[N, E, C]``, checked: float64 ``[N, E]``."""
        values = call_plugin(self.entry, "scores", self.criterion.scores, logits)
        self._check_scores("scores", values, logits.shape[:2], logits.device)
        return values.double()

    def _check_scores(
        self, method: str, values: object, shape: tuple[int, ...], device: torch.device
    ) -> None:
        """Raise a `PluginError` naming the criterion unless ``values`` is a tensor of
        ``shape`` on ``device`` holding real numbers (an integer or floating dtype: a complex
        score has no order, and a bool one is a decision, not a score to compare with a
        threshold). Reads metadata only: no host synchronisation."""
        if (
            isinstance(values, Tensor)
            and values.shape == shape
            and values.device == device
            and not values.is_complex()
            and values.dtype != torch.bool
        ):
            return
        got = (
            f"{tuple(values.shape)} ({values.dtype} on {values.device})"
            if isinstance(values, Tensor)
            else f"a {type(values).__name__}"
        )
        expected = (
            f"a real tensor of shape {tuple(shape)} on {device} (an integer or floating dtype): "
            "one score per row"
        )
        self._malformed(method, f"scores {got}", expected)

    def _malformed(self, method: str, got: str, expected: str) -> NoReturn:
        """Raise the `PluginError` for a criterion method that returned ``got``, naming the
        criterion, its plugin and the method, as `call_plugin` does for one that raises."""
        entry = self.entry
        raise PluginError(
            f"criterion '{self.name}' from plugin '{entry.plugin}' returned {got} from "
            f"{entry.component.__qualname__}.{method} ({entry.distribution} {entry.version}), "
            f"expected {expected}. Fix the criterion's {method}."
        )

    def __repr__(self) -> str:
        params = self.criterion.params.model_dump()
        extra = f", {params}" if params else ""
        calibrated = ", calibrated" if self.calibration is not None else ""
        certified = ""
        if self.certificate is not None:
            certified = ", certified" if self.certificate.certified else ", uncertified"
        never = ", never exits early" if not self.exits_early else ""
        return (
            f"ExitPolicy({self.name!r}, threshold={self.threshold}{extra}{calibrated}"
            f"{certified}{never})"
        )


def _finite_float(value: object) -> float | None:
    """``value`` as a float if it is a finite real number (bool excluded), else None."""
    if isinstance(value, bool) or not isinstance(value, Real):
        return None
    try:
        result = float(value)
    except OverflowError:  # an int beyond the float range
        return None
    return result if math.isfinite(result) else None


def fires(score: Tensor, threshold: float, direction: str) -> Tensor:
    """``score >= threshold`` ("ge") or ``<=`` ("le"), exact in float64; NaN never fires."""
    value = score.double()
    return value >= threshold if direction == "ge" else value <= threshold


def policy(
    name: str,
    threshold: float,
    calibration: Calibration | None = None,
    *,
    plugins: AdaptixPluginManager | None = None,
    **params: Any,
) -> ExitPolicy:
    """Resolve a registered criterion into an `ExitPolicy`.

    Args:
        name: any registered criterion, built-in (``confidence``, ``entropy``, ``patience``,
            ``pcee``, ``pcee_ws``, ``pcee_lcb``) or from a plugin.
        threshold: validated by the criterion itself (built-ins: [0, 1]; patience: integer >= 1).
        calibration: required by criteria that read one (``pcee``, ``pcee_ws``, ``pcee_lcb``):
            the paper's tables (`adaptix.calibrate`) or a survivor calibration made for this
            criterion, its parameters and ``threshold`` (`adaptix.calibrate_survivors`).
        plugins: the plugin manager to resolve ``name`` with (default: the shared one).
        **params: the criterion's own parameters (e.g. ``window=2`` for ``pcee_ws``).

    Raises:
        PluginError: unknown criterion (the message lists the available ones).
        ValidationError: threshold or parameters out of range, or a threshold other than the δ
            a survivor calibration was made for.
        CalibrationError: a calibration is needed and missing, or ``calibration`` is not a
            `Calibration`.
    """
    if not isinstance(name, str):
        raise ValidationError(f"expected a criterion name (str), got {name!r}.")
    if calibration is not None and not isinstance(calibration, Calibration):
        raise CalibrationError(
            "expected calibration to be an adaptix.Calibration or None, got a "
            f"{type(calibration).__name__}. Build one with "
            "adaptix.calibrate(calibration_trace), or read one with adaptix.Calibration.load."
        )
    manager = resolve_manager(plugins)
    entry = manager.criteria.entry(name)
    built = build_params(entry.component.Params, params, f"criterion '{name}'")
    criterion = call_plugin(entry, "__init__", entry.component, built, calibration)
    return ExitPolicy(criterion, threshold, entry)
