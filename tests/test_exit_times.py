"""`time_exits` and `ExitTimes`: measured per-input seconds of every block and head, and the
time-based ideal speed-up of an exit histogram."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

import adaptix
from adaptix import MultiExitModel, ValidationError
from adaptix.online.runtime import ExitTimes, time_exits


class Clock:
    """A fake ``time.perf_counter`` that only the modules below move."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Costly(nn.Module):
    """Identity that advances the clock by ``cost`` seconds per row, times the slowdown of the
    current pass (``passes[0]`` counts passes: every pass starts with block 0 of batch 0)."""

    def __init__(self, clock: Clock, cost: float, slowdown: list[float], passes: list[int]):
        super().__init__()
        self.clock, self.cost, self.slowdown, self.passes = clock, cost, slowdown, passes

    def forward(self, x: Tensor) -> Tensor:
        self.clock.now += self.cost * len(x) * self.slowdown[self.passes[0]]
        return x


class FirstBlock(Costly):
    def __init__(self, *args: Any, batches: int) -> None:
        super().__init__(*args)
        self.batches, self.calls = batches, 0

    def forward(self, x: Tensor) -> Tensor:
        self.passes[0] = self.calls // self.batches
        self.calls += 1
        return super().forward(x)


def clocked_model(clock: Clock, slowdown: list[float], batches: int) -> MultiExitModel:
    """Blocks costing 1, 2, 4 s per row and heads costing 0.1, 0.2, 0.3 s per row."""
    passes = [0]
    blocks = [
        FirstBlock(clock, 1.0, slowdown, passes, batches=batches),
        Costly(clock, 2.0, slowdown, passes),
        Costly(clock, 4.0, slowdown, passes),
    ]
    heads = [Costly(clock, c, slowdown, passes) for c in (0.1, 0.2, 0.3)]
    return MultiExitModel(nn.ModuleList(blocks), nn.ModuleList(heads))


def test_times_are_per_input_best_of_the_repeats_after_a_warm_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    monkeypatch.setattr(adaptix.online.runtime.time, "perf_counter", clock)
    # The warm-up pass is the fastest: counting it would halve every time.
    slowdown = [0.5, 3.0, 1.0, 2.0]
    model = clocked_model(clock, slowdown, batches=2)
    batches = [torch.zeros(6, 4), torch.zeros(4, 4)]
    times = time_exits(model, batches, repeats=3)
    assert times.block == pytest.approx((1.0, 2.0, 4.0))
    assert times.head == pytest.approx((0.1, 0.2, 0.3))
    assert times.batch_size == 6
    assert times.plain == pytest.approx(7.3)
    assert [times.to_exit(e) for e in range(3)] == pytest.approx([1.1, 3.3, 7.6])


@pytest.fixture(scope="module")
def measured() -> tuple[MultiExitModel, ExitTimes]:
    torch.manual_seed(0)
    model = adaptix.build_model("msdnet", 10, backbone_params={"base_channels": 4, "blocks": 3})
    model.eval()
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 1, 28, 28, generator=generator), torch.randn(5, 1, 28, 28)]
    return model, time_exits(model, batches, repeats=1)


def test_a_real_model_gets_one_positive_time_per_block_and_head(
    measured: tuple[MultiExitModel, ExitTimes],
) -> None:
    model, times = measured
    assert len(times.block) == len(times.head) == model.num_exits == 3
    assert all(t > 0 for t in (*times.block, *times.head))
    assert times.batch_size == 8
    assert times.plain == pytest.approx(sum(times.block) + times.head[-1])
    for e in range(3):
        assert times.to_exit(e) == pytest.approx(
            sum(times.block[: e + 1]) + sum(times.head[: e + 1])
        )
    # The last exit also paid for the heads before it: slower than the plain model.
    assert times.to_exit(2) > times.plain


def test_ideal_speedup_weighs_each_exit_by_its_time(
    measured: tuple[MultiExitModel, ExitTimes],
) -> None:
    times = measured[1]
    last = times.ideal_speedup(torch.tensor([0.0, 0.0, 1.0]))
    assert last == pytest.approx(times.plain / times.to_exit(2))
    assert last < 1  # intermediate heads cost time and nothing leaves early
    first = times.ideal_speedup(torch.tensor([1.0, 0.0, 0.0]))
    assert first == pytest.approx(times.plain / times.to_exit(0))
    mixed = times.ideal_speedup(torch.tensor([0.25, 0.25, 0.5]))
    mean = 0.25 * times.to_exit(0) + 0.25 * times.to_exit(1) + 0.5 * times.to_exit(2)
    assert mixed == pytest.approx(times.plain / mean)


def test_ideal_speedup_on_set_times_and_a_float64_histogram() -> None:
    times = ExitTimes(block=(1.0, 2.0), head=(0.5, 1.0), batch_size=4)
    assert times.plain == 4.0
    assert times.ideal_speedup(torch.tensor([1.0, 0.0], dtype=torch.float64)) == pytest.approx(
        4.0 / 1.5
    )
    assert times.ideal_speedup(torch.tensor([0.5, 0.5])) == pytest.approx(4.0 / 3.0)


@pytest.mark.parametrize("shares", [[1.0], [0.5, 0.25, 0.25, 0.0]], ids=["short", "long"])
def test_a_histogram_of_the_wrong_length_is_refused(
    measured: tuple[MultiExitModel, ExitTimes], shares: list[float]
) -> None:
    with pytest.raises(ValidationError, match="exit histogram of 3 shares, got"):
        measured[1].ideal_speedup(torch.tensor(shares))


@pytest.mark.parametrize(
    ("batches", "repeats", "message"),
    [
        ([], 1, "at least one batch"),
        ([torch.zeros(2, 1, 28, 28)], 0, "repeats"),
        ([torch.zeros(2, 1, 28, 28)], 1.5, "repeats"),
        ([torch.zeros(2, 1, 14, 14)], 1, r"shape \[N, 1, 28, 28\]"),
        ([torch.zeros(0, 1, 28, 28)], 1, "empty batch"),
    ],
    ids=["no-batches", "no-repeats", "float-repeats", "wrong-shape", "empty"],
)
def test_bad_arguments_are_refused(
    measured: tuple[MultiExitModel, ExitTimes], batches: list[Tensor], repeats: Any, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        time_exits(measured[0], batches, repeats=repeats)


@pytest.mark.parametrize(
    "shares",
    [[0.0, 0.0], [2.0, 0.0], [-1.0, 2.0], [float("nan"), 1.0], [0.5, float("inf")]],
    ids=["zeros", "counts", "negative", "nan", "inf"],
)
def test_a_histogram_that_is_not_shares_is_refused(shares: list[float]) -> None:
    times = ExitTimes(block=(1.0, 2.0), head=(0.5, 1.0), batch_size=4)
    with pytest.raises(ValidationError, match="shares"):
        times.ideal_speedup(torch.tensor(shares))


def test_a_simulated_histogram_in_float32_is_accepted() -> None:
    times = ExitTimes(block=(1.0,) * 7, head=(0.1,) * 7, batch_size=4)
    histogram = torch.full((7,), 1 / 7, dtype=torch.float32)  # sums to 1 only up to rounding
    assert times.ideal_speedup(histogram) == pytest.approx(
        times.plain / (sum(times.to_exit(e) for e in range(7)) / 7)
    )


def test_repeats_true_is_not_an_integer(measured: tuple[MultiExitModel, ExitTimes]) -> None:
    with pytest.raises(ValidationError, match="repeats"):
        time_exits(measured[0], [torch.zeros(2, 1, 28, 28)], repeats=True)
