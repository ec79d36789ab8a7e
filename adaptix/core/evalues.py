"""The shift test's maths: a two-sample e-process for categorical counts (pure functions of
counts; no model, no device).

`ShiftTest` compares the stream's exit-0 bin counts, and its exit counts, with those
of a reference sample (the calibration data, or any data the policy is known to serve well). It
is an e-process built by universal inference (Wasserman, Ramdas and Balakrishnan, 2020) for the
two-sample null "reference and stream are i.i.d. draws from one categorical distribution p, p
unknown". For counts r (reference, n inputs) and s (stream, t inputs) over K categories::

    E_t = DM(r; J) · DM(s; β) / max_p p^(r + s)

where DM(x; a) is the Dirichlet-multinomial probability of a sequence with counts x (a
Krichevsky–Trofimov / Jeffreys mixture, J = ½ per category) and β is a prior for the stream
fixed before the stream starts (`ShiftTest`). Under the null, with the true p*, the numerator
divided by p*^(r + s) is a product of a mean-one variable of the reference and a mean-one
martingale of the stream, and the denominator is at least p*^(r + s); so E_t is bounded by a
nonnegative martingale of mean one, and by Ville's inequality **P(E_t ≥ 1/α for some t) ≤ α,
however long the stream and however often it is checked**. The reference being a sample, not
the truth, is paid for in the numerator: comparing a long stream with a fixed empirical
reference as if it were exact would alarm on every long unshifted stream.

The exit-0 bins and the exit histogram each give such an e-process; a `ShiftMonitor` alarms when
their average, itself an e-process, reaches 1/α. Why an e-process rather than Wald's SPRT: the
null is composite (p is unknown) and the alternative unspecified, and the e-process needs
neither, stays valid under optional stopping and continuous monitoring, and is computed from the
cumulative counts alone.
"""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass

import torch
from torch import Tensor

from adaptix.core.describe import describe_value
from adaptix.errors import ValidationError
from adaptix.scalars import count, real, unit

#: The Jeffreys (Krichevsky–Trofimov) prior weight per category of the reference's mixture.
JEFFREYS = 0.5


def log_sequence_probability(counts: Tensor, prior: Tensor) -> Tensor:
    """log DM(x; a): the log probability of one sequence with category counts ``x`` under the
    Dirichlet(a) mixture of categorical distributions (float64, over the last dimension).

    Args:
        counts: ``[..., K]`` counts (any real dtype).
        prior: ``[K]`` or ``[..., K]`` positive Dirichlet weights.
    """
    x = counts.double()
    a = prior.double()
    total_prior = a.sum(-1)
    return (
        torch.lgamma(total_prior)
        - torch.lgamma(total_prior + x.sum(-1))
        + (torch.lgamma(a + x) - torch.lgamma(a)).sum(-1)
    )


def max_log_likelihood(counts: Tensor) -> Tensor:
    """max_p Σ x_k log p_k = Σ x_k log(x_k / Σx), float64, 0 log 0 = 0."""
    x = counts.double()
    total = x.sum(-1)
    terms = torch.where(x > 0, x * torch.log(x.clamp(min=1)), torch.zeros_like(x)).sum(-1)
    return terms - torch.where(total > 0, total * torch.log(total.clamp(min=1)), 0.0)


@dataclass(frozen=True)
class ShiftTest:
    """The two-sample e-process of this module's docstring, for one categorical variable.

    Args:
        reference: int64 ``[K]`` counts of the reference sample (integer counts, at least one
            input: with none, E_t ≤ 1 for every stream and the test could never alarm).
        concentration: κ, the weight of the reference in the stream's prior β = J + κ · (r + J)
            / Σ(r + J): 0 gives the plain Jeffreys prior; a larger κ spends less evidence when
            the stream is close to the reference and reaches an alarm faster on moderate
            shifts. Fixed before the stream starts, as validity requires. A finite real ≥ 0
            (Python or numpy; never a bool or a string).

    Raises:
        ValidationError: reference counts that are not a 1-d tensor of non-negative integers
            with a positive total, or a concentration that is not a finite real ≥ 0.
    """

    reference: Tensor
    concentration: float = 0.0

    def __post_init__(self) -> None:
        ref = check_counts_tensor(self.reference, "reference counts", dims=1)
        if int(ref.sum()) == 0:
            raise ValidationError(
                "expected reference counts of at least one input, got all zeros: against an "
                "empty reference E_t ≤ 1 for every stream, so the test could never alarm. "
                "Count a reference sample of the data the policy serves."
            )
        concentration = real(self.concentration, "concentration", low=0.0)
        object.__setattr__(self, "reference", ref.detach().to("cpu", torch.int64))
        object.__setattr__(self, "concentration", concentration)

    @property
    def categories(self) -> int:
        """K, the number of categories."""
        return int(self.reference.numel())

    def stream_prior(self) -> Tensor:
        """β, float64 ``[K]``."""
        jeffreys = torch.full((self.categories,), JEFFREYS, dtype=torch.float64)
        if self.concentration == 0:
            return jeffreys
        smoothed = self.reference.double() + JEFFREYS
        return jeffreys + self.concentration * smoothed / smoothed.sum()

    def log_evalue(self, stream: Tensor) -> Tensor:
        """log E_t for stream counts ``[..., K]`` (every leading index is one stream state),
        float64 on the CPU.

        Raises:
            ValidationError: not a tensor of K non-negative integer counts per state.
        """
        if not isinstance(stream, Tensor) or stream.shape[-1:] != (self.categories,):
            got = tuple(stream.shape) if isinstance(stream, Tensor) else describe_value(stream)
            raise ValidationError(f"expected stream counts [..., {self.categories}], got {got}.")
        check_counts_tensor(stream, "stream counts")
        s = stream.detach().to("cpu", torch.float64)
        r = self.reference.double()
        jeffreys = torch.full((self.categories,), JEFFREYS, dtype=torch.float64)
        return (
            log_sequence_probability(r, jeffreys)
            + log_sequence_probability(s, self.stream_prior())
            - max_log_likelihood(r + s)
        )


def segment_threshold(alpha: float, segment: int | Tensor) -> float | Tensor:
    """log(1/α_j), the alarm line of the j-th test segment (1-based) when the test restarts:
    α_j = α · 6 / (π² j²), so that the false-alarm probabilities of all segments add up to α
    (each segment's e-process is valid on its own; a union bound joins them).

    Raises:
        ValidationError: ``alpha`` outside (0, 1), or a segment that is not an integer ≥ 1.
    """
    alpha = unit(alpha, "alpha")
    if isinstance(segment, Tensor):
        return torch.log(math.pi**2 * segment.double() ** 2 / (6 * alpha))
    segment = count(segment, "segment", low=1)
    return math.log(math.pi**2 * segment**2 / (6 * alpha))


def evidence_path(
    tests: tuple[ShiftTest, ShiftTest],
    bin_counts: Tensor,
    exit_counts: Tensor,
    *,
    alpha: float,
    check_inputs: int,
    restart_every: int | None,
) -> tuple[Tensor, Tensor]:
    """What a `ShiftMonitor` computes along a stream checked every ``check_inputs`` inputs:
    log E and the alarm line after each of T checks, from the cumulative counts at the checks
    (exit-0 bins ``[T, M]``, exits ``[T, E]``), with the monitor's restarts (a new segment after
    the check where the current one reached ``restart_every`` inputs). Vectorised: the offline
    study's path through the monitor's own test.

    Raises:
        ValidationError: ``alpha`` outside (0, 1), ``check_inputs`` or ``restart_every`` not
            an integer ≥ 1, or counts that are not ``[T, K]`` non-negative integers of the
            tests' categories.
    """
    alpha = unit(alpha, "alpha")
    check_inputs = count(check_inputs, "check_inputs", low=1)
    if restart_every is not None:
        restart_every = count(restart_every, "restart_every", low=1)
    if not (
        isinstance(tests, tuple)
        and len(tests) == 2
        and all(isinstance(test, ShiftTest) for test in tests)
    ):
        raise ValidationError(
            f"expected tests as a tuple of two ShiftTests (exit-0 bins, exits), got "
            f"{reprlib.repr(tests)}."
        )
    for name, counts, test in (
        ("bin_counts", bin_counts, tests[0]),
        ("exit_counts", exit_counts, tests[1]),
    ):
        if (
            not isinstance(counts, Tensor)
            or counts.dim() != 2
            or counts.shape[1] != test.categories
        ):
            raise ValidationError(
                f"expected {name} as a [T, {test.categories}] tensor, got {describe_value(counts)}."
            )
    if bin_counts.shape[0] != exit_counts.shape[0]:
        raise ValidationError(
            f"expected bin_counts and exit_counts at the same {bin_counts.shape[0]} checks, got "
            f"{exit_counts.shape[0]} checks of exits."
        )
    checks = bin_counts.shape[0]
    index = torch.arange(checks)
    if restart_every is None:
        segment = torch.zeros(checks, dtype=torch.long)
    else:
        per_segment = -(-restart_every // check_inputs)  # checks per segment
        segment = index // per_segment
    start = segment * (checks if restart_every is None else per_segment)  # first check
    bins0 = torch.cat((torch.zeros_like(bin_counts[:1]), bin_counts))
    exits0 = torch.cat((torch.zeros_like(exit_counts[:1]), exit_counts))
    log_e = combine(
        [
            tests[0].log_evalue(bin_counts - bins0[start]),
            tests[1].log_evalue(exit_counts - exits0[start]),
        ]
    )
    if restart_every is None:
        return log_e, torch.full((checks,), math.log(1 / alpha), dtype=torch.float64)
    line = segment_threshold(alpha, segment + 1)
    assert isinstance(line, Tensor)
    return log_e, line


def combine(log_evalues: list[Tensor]) -> Tensor:
    """log of the average of several e-values (itself an e-value): logsumexp − log m."""
    stacked = torch.stack([value.double() for value in log_evalues])
    return torch.logsumexp(stacked, dim=0) - math.log(len(log_evalues))


def check_counts_tensor(counts: object, name: str, dims: int | None = None) -> Tensor:
    """``counts`` as a tensor of non-negative integer counts (``dims`` dimensions, at least
    one entry), or `ValidationError` naming ``name``."""
    if not isinstance(counts, Tensor) or (dims is not None and counts.dim() != dims):
        shape = f"a {dims}-d tensor" if dims is not None else "a tensor"
        raise ValidationError(f"expected {name} as {shape}, got {describe_value(counts)}.")
    if counts.numel() == 0:
        raise ValidationError(f"expected {name} with at least one category, got none.")
    if counts.is_floating_point() or counts.is_complex() or counts.dtype == torch.bool:
        raise ValidationError(
            f"expected integer {name}, got dtype {counts.dtype} (counts are whole numbers: "
            "never NaN, fractions or flags)."
        )
    if bool((counts < 0).any()):
        raise ValidationError(f"expected non-negative {name}, got a negative one.")
    return counts
