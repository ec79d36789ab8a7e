"""Trained models for the runtime benchmarks, cached on disk, and the session's summary table.

Training a CNN on CPU takes minutes, so the weights, the test trace and the calibration are
saved under ``.benchmarks/models/`` in files named by a hash of the configuration; a rerun with
the same configuration loads them instead of training again.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

import adaptix
from adaptix.core.cache import cache_key
from adaptix.core.rows import batch_size, take_rows
from adaptix.experiment.data import load_fashion_mnist
from adaptix.testing.speed import SpeedResult

MODEL_DIR = Path(__file__).resolve().parents[1] / ".benchmarks" / "models"
BINS = 10
#: Benchmark inputs keep their decisions at least this far from every boundary (confidence
#: against a bin edge, top-1 against top-2 probability): the runner computes later exits on
#: compacted batches, and another batch composition may move a float32 logit by about 1e-6.
MARGIN = 1e-4


@dataclass(frozen=True)
class CnnConfig:
    """A ``resnet`` model trained jointly on a Fashion-MNIST subset."""

    size: str = "medium"
    train_size: int = 4000
    calibration_size: int = 2000
    test_size: int = 2000
    epochs: int = 1
    batch_size: int = 64
    lr: float = 5e-3
    seed: int = 0

    @property
    def key(self) -> str:
        """The cache name: backbone, size and a hash of every field."""
        return f"resnet-{self.size}-{cache_key(**asdict(self))[:12]}"


@dataclass(frozen=True)
class MiniLMConfig:
    """MiniLM (frozen) with linear exit heads trained on a seeded BBC News subset.

    Disjoint seeded splits of the 2,225 articles: heads train on ``train``, the calibration is
    made on ``calibration``, and ``test`` is large enough for the batch-512 case. Articles are
    truncated to ``max_length`` tokens (the headline and first sentences carry the topic).
    """

    train: int = 400
    calibration: int = 300
    test: int = 640
    max_length: int = 64
    epochs: int = 30
    lr: float = 1e-2
    seed: int = 0

    @property
    def key(self) -> str:
        """The cache name: a hash of every field."""
        return f"minilm-bbc-{cache_key(**asdict(self))[:12]}"


@dataclass(frozen=True)
class Trained:
    """A trained model, its test inputs, their trace and the calibration of held-out data."""

    family: str
    model: adaptix.MultiExitModel
    inputs: Any
    trace: adaptix.Trace
    calibration: adaptix.Calibration


def _cached(key: str) -> tuple[Path, Path, Path]:
    return (
        MODEL_DIR / f"{key}.pt",
        MODEL_DIR / f"{key}-test.trace",
        MODEL_DIR / f"{key}-calibration.json",
    )


def load_cnn(config: CnnConfig) -> Trained:
    """The trained CNN of ``config``, from the cache or trained now (and cached)."""
    data = load_fashion_mnist(
        calibration_size=config.calibration_size,
        train_size=config.train_size,
        test_size=config.test_size,
        seed=config.seed,
    )
    torch.manual_seed(config.seed)
    model = adaptix.build_model("resnet", 10, backbone_params={"size": config.size})
    weights, test_trace, calibration_file = _cached(config.key)
    if weights.is_file() and test_trace.is_file() and calibration_file.is_file():
        model.load_state_dict(torch.load(weights, weights_only=True))
        model.eval()
        trace = adaptix.Trace.load(test_trace)
        calibration = adaptix.Calibration.load(calibration_file)
    else:
        adaptix.train_exits(
            model,
            data.train.pair(),
            mode="joint",
            epochs=config.epochs,
            batch_size=config.batch_size,
            lr=config.lr,
            seed=config.seed,
            progress=False,
        )
        calibration = adaptix.calibrate(model.trace(*data.calibration.pair()), bins=BINS)
        trace = model.trace(*data.test.pair())
        MODEL_DIR.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), weights)
        trace.save(test_trace)
        calibration.save(calibration_file)
    return Trained("resnet-" + config.size, model, data.test.images, trace, calibration)


def load_minilm(config: MiniLMConfig) -> Trained:
    """MiniLM with exit heads trained on BBC News (heads cached; the encoder is the package's)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never reach for the hub
    from adaptix_transformers import load_bbc_news
    from adaptix_transformers import load_minilm as load_encoder

    encoder, tokenizer = load_encoder()
    texts, labels, class_names = load_bbc_news()
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(config.seed))
    n_train, n_calibration = config.train, config.calibration
    index = {
        "train": order[:n_train],
        "calibration": order[n_train : n_train + n_calibration],
        "test": order[n_train + n_calibration : n_train + n_calibration + config.test],
    }
    splits = {}
    for split, rows in index.items():
        encoded = tokenizer(
            [texts[i] for i in rows.tolist()],
            padding=True,
            truncation=True,
            max_length=config.max_length,
            return_tensors="pt",
        )
        splits[split] = (dict(encoded), labels[rows])
    model = adaptix.build_model("transformers", len(class_names), source=encoder)
    heads, test_trace, calibration_file = _cached(config.key)
    if heads.is_file() and test_trace.is_file() and calibration_file.is_file():
        model.heads.load_state_dict(torch.load(heads, weights_only=True))
        model.eval()
        trace = adaptix.Trace.load(test_trace)
        calibration = adaptix.Calibration.load(calibration_file)
    else:
        adaptix.train_exits(
            model,
            splits["train"],
            mode="frozen",
            epochs=config.epochs,
            lr=config.lr,
            seed=config.seed,
            progress=False,
        )
        calibration = adaptix.calibrate(model.trace(*splits["calibration"], batch_size=64))
        trace = model.trace(*splits["test"], batch_size=64)
        MODEL_DIR.mkdir(parents=True, exist_ok=True)
        torch.save(model.heads.state_dict(), heads)
        trace.save(test_trace)
        calibration.save(calibration_file)
    return Trained("minilm", model, splits["test"][0], trace, calibration)


def unambiguous_rows(trace: adaptix.Trace, count: int) -> Tensor:
    """The first ``count`` inputs whose predictions and confidence bins are clear at every exit.

    Raises:
        AssertionError: fewer such inputs than ``count``.
    """
    probs = torch.softmax(trace.logits.float(), dim=-1)
    top2 = probs.topk(2, dim=-1).values
    scaled = top2[..., 0] * BINS
    clear = (top2[..., 0] - top2[..., 1] > MARGIN) & ((scaled - scaled.round()).abs() > MARGIN)
    rows = clear.all(dim=1).nonzero().squeeze(1)
    assert rows.numel() >= count, f"only {rows.numel()} unambiguous inputs, need {count}"
    return rows[:count]


def pcee_deltas(
    trace: adaptix.Trace, calibration: adaptix.Calibration, targets: tuple[float, ...]
) -> dict[float, float]:
    """For each target early-exit rate, the δ of ``pcee`` whose rate on ``trace`` is closest,
    among those whose rate no earlier target took (three targets: three different δ and rates,
    wherever the calibration allows three).

    The rate only changes where δ crosses a calibrated bin accuracy, so those are the candidates.
    A very accurate model (MiniLM on BBC News) already lets most inputs leave at δ = 1, so its
    lowest target gets δ = 1 and the others the next distinct rates.
    """
    table = calibration.accuracy()
    candidates = sorted(set(table[torch.isfinite(table)].tolist()))
    frontier = adaptix.sweep(trace, "pcee", candidates, calibration)
    rates = [point.early_exit_rate for point in frontier]
    chosen: dict[float, float] = {}
    taken: set[float] = set()
    for target in targets:
        free = [i for i in range(len(rates)) if rates[i] not in taken] or list(range(len(rates)))
        best = min(free, key=lambda i: abs(rates[i] - target))
        chosen[target] = candidates[best]
        taken.add(rates[best])
    return chosen


def batches(inputs: Any, size: int) -> list[Any]:
    """``inputs`` in consecutive batches of ``size`` rows (as `ExitBenchmark` splits them)."""
    n = batch_size(inputs)
    return [take_rows(inputs, slice(start, start + size)) for start in range(0, n, size)]


@dataclass(frozen=True)
class Row:
    """One measured runner configuration.

    Attributes:
        family: the model family.
        policy: the policy, in the table's words.
        result: what `ExitBenchmark` measured (through the ``exit_benchmark`` fixture).
        overhead: time(runner) / time(every block and head, no decisions) - 1, where measured
            (the no-exit case, whose baseline is every block and head: ``1 / realised - 1``).
    """

    family: str
    policy: str
    result: SpeedResult
    overhead: float | None = None

    @property
    def against(self) -> str:
        """The baseline, in the table's words."""
        return "plain" if self.overhead is None else "all heads"

    @property
    def ms_per_batch(self) -> float | None:
        """The runner's median milliseconds per call (None: not timed)."""
        seconds = self.result.runner_seconds
        calls = math.ceil(self.result.inputs / self.result.batch_size)
        return None if seconds is None else 1000 * seconds / calls


@dataclass(frozen=True)
class CheckCost:
    """The measured cost of a runner feature (the finite check, the shift monitor) at one batch
    size: the runner with it against the same runner without it.

    Attributes:
        family: the model family.
        batch: rows per runner call.
        early: share of rows that left before the last exit.
        cost: ``1 / realised - 1`` from `ExitBenchmark` with the runner without the feature
            as the baseline: time(on) / time(off) - 1, off timed right before and after every
            timed round of on (median over rounds).
        rounds: timed rounds.
    """

    family: str
    batch: int
    early: float
    cost: float
    rounds: int


@dataclass
class Summary:
    """Collects the session's rows and prints the speed-up table at the end of the session.

    Registered as a pytest plugin by the benchmarks' session fixture, so its
    `pytest_terminal_summary` runs after every benchmark (when the output is no longer captured).
    """

    rows: list[Row] = field(default_factory=list)
    check_costs: list[CheckCost] = field(default_factory=list)

    def table(self) -> list[str]:
        """The summary, one line a row."""
        lines = [
            f"{'family':<14} {'mode':<9} {'policy':<18} {'batch':>5} {'against':<9} "
            f"{'early':>6} {'ideal':>6} {'ideal(mode)':>11} {'realised':>8} {'real/ideal':>10} "
            f"{'ms/batch':>9} {'vs all-heads':>12}"
        ]
        rows = sorted(
            self.rows, key=lambda r: (r.family, r.result.batch_size, r.result.mode, r.policy)
        )
        for row in rows:
            r = row.result
            lines.append(
                f"{row.family:<14} {r.mode:<9} {row.policy:<18} {r.batch_size:>5} "
                f"{row.against:<9} {r.early_exit_rate:>6.1%} {r.ideal_speedup:>6.2f} "
                f"{r.ideal_speedup_mode:>11.2f} {_format(r.realised_speedup, '8.2f')} "
                f"{_format(r.realised_over_ideal, '10.2f')} {_format(row.ms_per_batch, '9.2f')} "
                f"{_format(row.overhead, '+12.1%')}"
            )
        return lines

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """Print the tables (pytest hook)."""
        if self.check_costs:
            terminalreporter.write_sep("-", "the runner's finite check: check_finite=True vs False")
            terminalreporter.write_line(
                "cost = time(check on) / time(check off) - 1, median over rounds, the runner "
                "without the check timed right before and after each round"
            )
            terminalreporter.write_line(
                f"{'family':<14} {'batch':>5} {'early':>6} {'cost':>7} {'rounds':>6}"
            )
            for check in sorted(self.check_costs, key=lambda c: (c.family, c.batch)):
                terminalreporter.write_line(
                    f"{check.family:<14} {check.batch:>5} {check.early:>6.1%} "
                    f"{check.cost:>+7.2%} {check.rounds:>6}"
                )
        if not self.rows:
            return
        terminalreporter.write_sep("-", "early-exit runtime: speed-ups against the plain model")
        terminalreporter.write_line(
            "ideal = baseline FLOPs / mean FLOPs of the exits taken; realised = time(baseline) / "
            "time(runner), median over rounds, the baseline timed right before and after each "
            "round (adaptix.testing.speed.ExitBenchmark). Baseline: the plain model, or for the "
            "no-exit policy every block and head without decisions (ideal 1), whence vs "
            "all-heads = 1 / realised - 1"
        )
        for line in self.table():
            terminalreporter.write_line(line)


def _format(value: float | None, spec: str) -> str:
    """``value`` formatted by ``spec``, or blanks of the same width."""
    return format(value, spec) if value is not None else "".rjust(len(format(0.0, spec)))
