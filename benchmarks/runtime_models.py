"""Trained models for the runtime benchmarks, cached on disk, and the session's summary table.

Training a CNN on CPU takes minutes, so the weights, the test trace and the calibration are
saved under ``.benchmarks/models/`` in files named by a hash of the configuration; a rerun with
the same configuration loads them instead of training again.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

import adaptix
from adaptix.data import load_fashion_mnist
from adaptix.experiment.cache import cache_key
from adaptix.rows import take_rows

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


def batches(inputs: Any, rows: Tensor, size: int) -> list[Any]:
    """The inputs ``rows`` in consecutive batches of ``size``."""
    chosen = take_rows(inputs, rows)
    return [take_rows(chosen, slice(start, start + size)) for start in range(0, len(rows), size)]


def lockstep_mean_cost(costs: Tensor, exit_index: Tensor, batch: int) -> float:
    """Mean cost per input in lockstep mode, where a batch of ``batch`` consecutive inputs runs
    every block and head up to its deepest exit for all its rows."""
    deepest = torch.cat([chunk.max().expand(len(chunk)) for chunk in exit_index.split(batch)])
    return float(costs[deepest].mean())


@dataclass(frozen=True)
class Row:
    """One measured runner configuration.

    Attributes:
        family: the model family.
        mode: the runner's mode.
        policy: the policy, in words.
        batch: rows per runner call.
        early: share of rows that left before the last exit.
        ideal: plain FLOPs / mean FLOPs of the exits taken.
        ideal_mode: the same with lockstep's cost (every row up to its batch's deepest exit).
        seconds: the runner's median seconds per round.
        calls: runner calls per round.
        realised: median over rounds of time(plain) / time(runner), each pair measured together.
        overhead: median of time(runner) / time(every block and head, no decisions) - 1, where
            measured (the no-exit case).
    """

    family: str
    mode: str
    policy: str
    batch: int
    early: float
    ideal: float
    ideal_mode: float
    seconds: float
    calls: int
    realised: float | None
    overhead: float | None = None


@dataclass(frozen=True)
class CheckCost:
    """The measured cost of the runner's finite check at one batch size.

    Attributes:
        family: the model family.
        batch: rows per runner call.
        early: share of rows that left before the last exit.
        cost: median over rounds of time(check on) / time(check off) - 1, each round an
            on, off, off, on quadruple.
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
            f"{'family':<14} {'mode':<9} {'policy':<18} {'batch':>5} {'early':>6} {'ideal':>6} "
            f"{'ideal(mode)':>11} {'realised':>8} {'real/ideal':>10} {'ms/batch':>9} "
            f"{'vs all-heads':>12}"
        ]
        for row in sorted(self.rows, key=lambda r: (r.family, r.batch, r.mode, r.policy)):
            ratio = None if row.realised is None else row.realised / row.ideal
            lines.append(
                f"{row.family:<14} {row.mode:<9} {row.policy:<18} {row.batch:>5} "
                f"{row.early:>6.1%} {row.ideal:>6.2f} {row.ideal_mode:>11.2f} "
                f"{_format(row.realised, '8.2f')} {_format(ratio, '10.2f')} "
                f"{1000 * row.seconds / row.calls:>9.2f} {_format(row.overhead, '+12.1%')}"
            )
        return lines

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """Print the tables (pytest hook)."""
        if self.check_costs:
            terminalreporter.write_sep("-", "the runner's finite check: check_finite=True vs False")
            terminalreporter.write_line(
                "cost = time(check on) / time(check off) - 1, median over rounds of four runs "
                "each (on, off, off, on)"
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
            "ideal = plain FLOPs / mean FLOPs of the exits taken; realised = time(plain) / "
            "time(runner), median over rounds, the plain model timed right before each round; "
            "vs all-heads = time(runner) / time(every block and head, no decisions) - 1"
        )
        for line in self.table():
            terminalreporter.write_line(line)


def _format(value: float | None, spec: str) -> str:
    """``value`` formatted by ``spec``, or blanks of the same width."""
    return format(value, spec) if value is not None else "".rjust(len(format(0.0, spec)))
