"""Survivor calibration (``PCEE.md``: survivor calibration): exit e's bins count only the
calibration inputs that the rule at δ sends on from the exits before.

A hand-computed example, the defining property (survivor counts = the paper's counts of the
inputs that `adaptix.simulate` sends to each exit), shards that add exactly, runner = simulate
(fused table and plain score), files, refusals, and the measured effect on an overconfident
trace.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import adaptix
from adaptix import (
    Calibration,
    CalibrationError,
    PluginError,
    SurvivorCounts,
    ValidationError,
    calibrate_survivors,
    count_survivors,
)
from adaptix.components import ParamsModel
from adaptix.core.calibration import SurvivorRule, bin_accuracy, count_bins
from adaptix.default_plugins.criteria import PCEE
from adaptix.offline.survivors import reads_bin_table
from adaptix.testing import synthetic_trace

RULES = [("pcee", {}), ("pcee_ws", {"window": 2}), ("pcee_lcb", {"bonferroni": True})]
DELTAS = [0.0, 0.3, 0.5, 0.7, 0.9, 1.0]


def _hand_trace() -> adaptix.Trace:
    """Six inputs, three exits, three classes, label 0; confidences in bins 2 and 3 of M = 4.

    [z, 0, 0] is right with confidence e^z / (e^z + 2); [0, z, 0] wrong with the same one.
    z = 3: 0.909 (bin 3); z = 1.2: 0.624 (bin 2).
    """
    hi, lo = 3.0, 1.2

    def right(z: float) -> list[float]:
        return [z, 0.0, 0.0]

    def wrong(z: float) -> list[float]:
        return [0.0, z, 0.0]

    rows = [
        # exit 0       exit 1       exit 2
        [right(hi), right(hi), right(hi)],
        [right(hi), right(hi), right(hi)],
        [right(hi), right(hi), right(hi)],
        [wrong(hi), right(hi), right(hi)],
        [right(lo), right(hi), right(lo)],
        [wrong(lo), wrong(hi), right(lo)],
    ]
    return adaptix.Trace(torch.tensor(rows), torch.zeros(6, dtype=torch.int64), [1.0, 2.0, 3.0])


def test_a_hand_computed_example() -> None:
    trace = _hand_trace()
    counts = calibrate_survivors(trace, [0.6, 0.8], "pcee", bins=4)
    # δ = 0.6. Exit 0: bin 3 holds inputs 0-3 (3 right: 0.75 >= 0.6, they leave), bin 2
    # inputs 4-5 (1 right: 0.5, they stay). Exit 1 counts inputs 4 and 5 only: bin 3, 1 right
    # (0.5: they stay), where the paper's table has 5 of 6 right (0.83). Exit 2: bin 2, 2 right.
    assert counts.counts[0].tolist() == [[0, 0, 2, 4], [0, 0, 0, 2], [0, 0, 2, 0]]
    assert counts.correct[0].tolist() == [[0, 0, 1, 3], [0, 0, 0, 1], [0, 0, 2, 0]]
    # δ = 0.8: nobody leaves at exit 0 (0.75), all six reach exit 1, 5 of 6 right: all leave.
    assert counts.counts[1].tolist() == [[0, 0, 2, 4], [0, 0, 0, 6], [0, 0, 0, 0]]
    assert counts.correct[1].tolist() == [[0, 0, 1, 3], [0, 0, 0, 5], [0, 0, 0, 0]]
    survivors = adaptix.simulate(trace, counts.policy(0.6))
    paper = adaptix.simulate(trace, adaptix.policy("pcee", 0.6, adaptix.calibrate(trace, bins=4)))
    assert survivors.exit_index.tolist() == [0, 0, 0, 0, 2, 2]
    assert paper.exit_index.tolist() == [0, 0, 0, 0, 1, 1]  # input 5 leaves wrong
    assert counts.calibration(0.6).survivors == SurvivorRule("pcee", (), 0.6)


def test_empty_bins_never_fire_even_at_zero() -> None:
    """At δ = 0 every calibration input leaves at exit 0, so exits 1 and 2 have empty survivor
    tables: nothing leaves there. An input whose exit-0 bin is empty (confidence 1/3, bin 1)
    goes on to the last exit (``pcee_ws`` pools bin 1 with its filled neighbours: defined)."""
    trace = _hand_trace()
    flat = adaptix.Trace(torch.zeros(1, 3, 3), torch.zeros(1, dtype=torch.int64), [1, 2, 3])
    for criterion, params in RULES:
        pol = calibrate_survivors(trace, [0.0], criterion, bins=4, **params).policy(0.0)
        assert pol.calibration is not None
        assert pol.calibration.counts[1:].sum() == 0
        assert adaptix.simulate(trace, pol).exit_index.tolist() == [0] * 6, criterion
        scores = pol.scores(torch.cat([trace.logits, flat.logits]))
        assert not bool(pol.fires(scores[:, 1:2]).any()), criterion  # exit 1's empty table
        if criterion != "pcee_ws":
            assert adaptix.simulate(flat, pol).exit_index.tolist() == [2], criterion


@pytest.mark.parametrize(("criterion", "params"), RULES)
def test_survivors_are_the_inputs_the_policy_sends_on(criterion: str, params: dict) -> None:
    """The defining property: at every δ, exit e's survivor tables are the paper's tables of
    the calibration inputs that the survivor policy sends to exit e or later."""
    trace = synthetic_trace(600, 5, 6, seed=3).scaled(2.0)
    counts = calibrate_survivors(trace, DELTAS, criterion, bins=8, **params)
    for delta in DELTAS:
        calibration = counts.calibration(delta)
        exits = adaptix.simulate(trace, counts.policy(delta)).exit_index
        for e in range(trace.num_exits):
            reached = exits >= e
            if not bool(reached.any()):
                assert int(calibration.counts[e].sum()) == 0
                continue
            paper = count_bins(trace.subset(reached), 8)
            assert torch.equal(calibration.counts[e], paper.counts[e]), (delta, e)
            assert torch.equal(calibration.correct[e], paper.correct[e]), (delta, e)
    # Exit 0 counts every input: the paper's table, at every δ.
    paper = adaptix.calibrate(trace, bins=8)
    assert all(torch.equal(counts.counts[d, 0], paper.counts[0]) for d in range(len(DELTAS)))


@pytest.mark.parametrize(("criterion", "params"), [RULES[0], RULES[2]])
def test_on_the_calibration_set_early_accuracy_reaches_delta(criterion: str, params: dict) -> None:
    """Every bin that fires counts exactly the calibration inputs that leave there, at least
    δ of them right (the bound is below the bin accuracy): so is their mixture."""
    trace = synthetic_trace(800, 6, 8, seed=4).scaled(3.0)
    counts = calibrate_survivors(trace, DELTAS[1:], criterion, **params)
    for delta in counts.deltas:
        early = adaptix.simulate(trace, counts.policy(delta)).early_accuracy
        assert early is None or math.isnan(early) or early >= delta, delta


@pytest.mark.parametrize(("criterion", "params"), RULES)
@pytest.mark.parametrize("equal_mass", [False, True])
def test_shards_add_to_the_single_process_counts_exactly(
    criterion: str, params: dict, equal_mass: bool
) -> None:
    trace = synthetic_trace(700, 5, 6, seed=1).scaled(2.5)
    edges = adaptix.calibrate(trace, "equal_mass", bins=8).edges if equal_mass else None
    whole = calibrate_survivors(trace, DELTAS, criterion, bins=8, edges=edges, **params)
    shards = [
        trace.subset(slice(0, 90)),
        trace.subset(slice(90, 400)),
        trace.subset(slice(400, 700)),
    ]
    counts = SurvivorCounts.empty(
        DELTAS, criterion, num_exits=5, num_classes=6, bins=8, edges=edges, **params
    )
    for _ in range(trace.num_exits):  # one reduction per exit
        counts = sum(count_survivors(shard, counts) for shard in reversed(shards))
    assert isinstance(counts, SurvivorCounts)
    assert counts.complete
    assert torch.equal(counts.counts, whole.counts)
    assert torch.equal(counts.correct, whole.correct)
    torch.testing.assert_close(counts.confidence_sum, whole.confidence_sum, rtol=0, atol=1e-9)
    assert counts.rows is not None
    assert whole.rows is not None
    assert torch.equal(counts.rows, whole.rows)
    for delta in DELTAS:
        assert torch.equal(counts.calibration(delta).counts, whole.calibration(delta).counts)


def _model_and_inputs() -> tuple[adaptix.MultiExitModel, torch.Tensor, torch.Tensor]:
    """Four near-identity blocks; head e reads a hidden linear labelling more clearly with
    depth (last exit about 0.6 accurate), labels 10 % noisy: confidences spread over bins."""
    generator = torch.Generator().manual_seed(0)
    truth = torch.randn(7, 16, generator=generator)
    blocks, heads = nn.ModuleList(), nn.ModuleList()
    for e in range(4):
        block, head = nn.Linear(16, 16), nn.Linear(16, 7)
        with torch.no_grad():
            block.weight.copy_(torch.eye(16) + 0.05 * torch.randn(16, 16, generator=generator))
            block.bias.zero_()
            noise = torch.randn(7, 16, generator=generator)
            head.weight.copy_((0.3 + 0.3 * e) * truth + (1.0 - 0.2 * e) * noise)
            head.bias.zero_()
        blocks.append(block)
        heads.append(head)
    x = torch.randn(400, 16, generator=generator)
    y = (x @ truth.t()).argmax(dim=1)
    noisy = torch.rand(400, generator=generator) < 0.1
    y = torch.where(noisy, torch.randint(0, 7, (400,), generator=generator), y)
    return adaptix.MultiExitModel(blocks, heads).eval(), x, y


@pytest.mark.parametrize(("criterion", "params"), RULES)
@pytest.mark.parametrize("mode", ["compact", "lockstep"])
def test_runner_exits_where_simulate_says(criterion: str, params: dict, mode: str) -> None:
    model, x, y = _model_and_inputs()
    trace = model.trace(x, y)
    grid = [0.3, 0.4, 0.5, 0.6]
    counts = calibrate_survivors(trace, grid, criterion, **params)
    spread = 0
    for delta in grid:
        pol = counts.policy(delta)
        calibration = pol.calibration
        assert calibration is not None
        assert calibration.survivors is not None
        expected = adaptix.simulate(trace, pol)
        spread = max(spread, len(set(expected.exit_index.tolist())))
        own = type(pol.criterion).bin_table(
            pol.criterion.params, calibration.counts, calibration.correct
        )
        assert own is not None
        for e in range(trace.num_exits):  # the kernel path reads the survivor table
            table = pol.criterion.fused_table(e)
            assert table is not None
            torch.testing.assert_close(table, own[e], rtol=0, atol=0, equal_nan=True)
        for fused in (True, False):
            out = adaptix.EarlyExitRunner(model, pol, mode=mode, fused=fused, backend="torch")(x)
            assert torch.equal(out.exit_index, expected.exit_index), (delta, fused)
            assert torch.equal(out.predictions, expected.predictions), (delta, fused)
    assert spread >= 3, "the grid should spread the exits"


@pytest.mark.parametrize(("criterion", "params"), RULES)
@pytest.mark.parametrize("equal_mass", [False, True])
def test_exit_indices_are_simulate_at_every_delta(
    criterion: str, params: dict, equal_mass: bool
) -> None:
    """The vectorised exits of the whole grid equal `simulate` of each δ's policy, on another
    trace than the one counted, one of whose inputs has an undefined softmax at exit 1."""
    calibration_trace = synthetic_trace(600, 4, 6, seed=21).scaled(2.0)
    logits = synthetic_trace(400, 4, 6, seed=22).scaled(2.0).logits.double()
    logits[0, 1, 0] = 1e300  # beyond float32: its softmax is undefined, it never leaves there
    test_trace = adaptix.Trace(logits, None, [1.0, 2.0, 3.0, 4.0])
    edges = adaptix.calibrate(calibration_trace, "equal_mass", 8).edges if equal_mass else None
    counts = calibrate_survivors(
        calibration_trace, DELTAS, criterion, bins=8, edges=edges, **params
    )
    exits = counts.exit_indices(test_trace)
    assert exits.dtype == torch.int64
    assert tuple(exits.shape) == (400, len(DELTAS))
    for d, delta in enumerate(DELTAS):
        expected = adaptix.simulate(test_trace, counts.policy(delta)).exit_index
        assert torch.equal(exits[:, d], expected), delta
    assert len(set(exits[:, 3].tolist())) >= 3, "δ = 0.7 should spread the exits"
    with pytest.raises(CalibrationError, match="exits"):
        counts.exit_indices(synthetic_trace(10, 3, 6))
    empty = SurvivorCounts.empty(DELTAS, criterion, num_exits=4, num_classes=6, **params)
    with pytest.raises(ValidationError, match="every exit"):
        empty.exit_indices(test_trace)


def test_which_criteria_survivor_calibration_can_decide_with() -> None:
    assert [reads_bin_table(c) for c in ("pcee", "pcee_ws", "pcee_lcb")] == [True] * 3
    assert [reads_bin_table(c) for c in ("confidence", "entropy", "patience")] == [False] * 3
    with pytest.raises(PluginError, match="bogus"):
        reads_bin_table("bogus")


def test_triton_kernel_reads_the_survivor_table() -> None:
    """The fused Triton kernel under the interpreter (a subprocess: TRITON_INTERPRET must be set
    before triton is first imported) decides like the plain score and the simulation."""
    pytest.importorskip("triton")
    script = textwrap.dedent(
        """
        import torch, adaptix
        from tests.test_survivors import RULES, _model_and_inputs
        model, x, y = _model_and_inputs()
        x, y = x[:96], y[:96]
        trace = model.trace(x, y)
        for criterion, params in RULES:
            counts = adaptix.calibrate_survivors(trace, [0.3, 0.5], criterion, **params)
            for delta in counts.deltas:
                policy = counts.policy(delta)
                kernel = adaptix.EarlyExitRunner(model, policy, backend="triton")(x)
                plain = adaptix.EarlyExitRunner(model, policy, fused=False)(x)
                expected = adaptix.simulate(trace, policy).exit_index
                assert torch.equal(kernel.exit_index, plain.exit_index), criterion
                assert torch.equal(kernel.exit_index, expected), criterion
                assert torch.equal(kernel.predictions, plain.predictions), criterion
        print("agree")
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": root}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
        cwd=root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "agree" in done.stdout


def test_files_round_trip(tmp_path: Path) -> None:
    trace = synthetic_trace(400, 4, 5, seed=2).scaled(2.0)
    counts = calibrate_survivors(trace, [0.5, 0.8], "pcee_lcb", alpha=0.1, bonferroni=True)
    calibration = counts.calibration(0.8)
    assert calibration.to_document()["version"] == 4
    assert adaptix.calibrate(trace).to_document()["version"] == 3  # the paper's: unchanged
    loaded = Calibration.load(calibration.save(tmp_path / "survivors.json"))
    assert loaded == calibration
    assert loaded.checksum == calibration.checksum
    assert loaded.survivors == SurvivorRule("pcee_lcb", (("alpha", 0.1), ("bonferroni", True)), 0.8)
    pol = counts.policy(0.8)
    again = adaptix.ExitPolicy.load(pol.save(tmp_path / "policy.json"))
    assert again.calibration == calibration
    assert again.threshold == 0.8
    assert torch.equal(
        adaptix.simulate(trace, again).exit_index, adaptix.simulate(trace, pol).exit_index
    )
    # A survivor rule edited in the file breaks its checksum.
    text = (tmp_path / "survivors.json").read_text().replace('"delta": 0.8', '"delta": 0.5')
    (tmp_path / "edited.json").write_text(text)
    with pytest.raises(CalibrationError, match="checksum mismatch"):
        Calibration.load(tmp_path / "edited.json")


def test_a_survivor_calibration_is_bound_to_its_rule_and_delta() -> None:
    trace = synthetic_trace(400, 4, 5, seed=2).scaled(2.0)
    counts = calibrate_survivors(trace, [0.5, 0.8], "pcee_ws")
    calibration = counts.calibration(0.8)
    with pytest.raises(ValidationError, match=r"survivor calibration made for δ = 0\.8"):
        adaptix.policy("pcee_ws", 0.5, calibration)
    with pytest.raises(ValidationError, match=r"made for δ = 0\.8"):
        counts.policy(0.8).with_threshold(0.81)
    with pytest.raises(ValidationError, match=r"made for δ = 0\.8"):
        adaptix.sweep(trace, "pcee_ws", [0.7, 0.8], calibration)
    with pytest.raises(CalibrationError, match=r"made for 'pcee_ws'"):
        adaptix.policy("pcee_lcb", 0.8, calibration)
    with pytest.raises(CalibrationError, match=r"with \{'window': 1\}"):
        adaptix.policy("pcee_ws", 0.8, calibration, window=2)
    with pytest.raises(CalibrationError, match="do not add"):
        _ = calibration + calibration
    with pytest.raises(CalibrationError, match="do not add"):
        _ = adaptix.calibrate(trace) + calibration
    # Tables that do not come from the rule they name.
    tampered = Calibration(
        calibration.counts,
        calibration.correct,
        5,
        survivors=SurvivorRule("pcee_ws", (("window", 1),), 0.5),
    )
    with pytest.raises(CalibrationError, match="do not come from that rule"):
        adaptix.policy("pcee_ws", 0.5, tampered)
    # A later exit counting more than the one before is no survivor calibration.
    with pytest.raises(CalibrationError, match="no more inputs than the exit before"):
        Calibration([[1, 1], [2, 1]], [[1, 1], [1, 1]], 2, survivors=SurvivorRule("pcee", (), 0.5))


@pytest.mark.parametrize(
    ("deltas", "message"),
    [
        ([1.5], r"deltas\[0\] in \[0, 1\]"),
        ([0.5, -0.1], r"deltas\[1\] in \[0, 1\]"),
        ([math.nan], "finite real number"),
        ([True], "finite real number|real number"),
        (["0.5"], "real number"),
        ([], "at least one target"),
        ([0.5, 0.5], "distinct"),
        (0.5, "a list"),
    ],
)
def test_bad_grids_are_refused(deltas: object, message: str) -> None:
    trace = synthetic_trace(100, 3, 4)
    with pytest.raises(ValidationError, match=message):
        calibrate_survivors(trace, deltas)  # type: ignore[arg-type]  # deliberately wrong


def test_bad_input_is_refused() -> None:
    trace = synthetic_trace(100, 3, 4)
    with pytest.raises(CalibrationError, match="labelled trace"):
        calibrate_survivors(synthetic_trace(100, 3, 4, labelled=False), [0.5])
    with pytest.raises(PluginError, match="bin_table returns None"):
        calibrate_survivors(trace, [0.5], "confidence")
    with pytest.raises(PluginError, match="nonsense"):
        calibrate_survivors(trace, [0.5], "nonsense")
    with pytest.raises(ValidationError, match="alpha"):
        calibrate_survivors(trace, [0.5], "pcee_lcb", alpha=2.0)
    with pytest.raises(ValidationError, match="bins"):
        calibrate_survivors(trace, [0.5], bins=0)
    start = SurvivorCounts.empty([0.5], num_exits=3, num_classes=4)
    with pytest.raises(CalibrationError, match="4 exits and 4 classes"):
        count_survivors(synthetic_trace(100, 4, 4), start)
    done = calibrate_survivors(trace, [0.5])
    with pytest.raises(ValidationError, match="an exit left to count"):
        count_survivors(trace, done)
    with pytest.raises(ValidationError, match="1 of 3 exits counted"):
        count_survivors(trace, start).calibration(0.5)
    with pytest.raises(ValidationError, match="a δ of the grid"):
        done.calibration(0.6)
    with pytest.raises(ValidationError, match="same deltas"):
        _ = count_survivors(trace, start) + count_survivors(
            trace, SurvivorCounts.empty([0.6], num_exits=3, num_classes=4)
        )
    with pytest.raises(ValidationError, match="same counted"):
        _ = count_survivors(trace, start) + start
    with pytest.raises(ValidationError, match="SurvivorCounts to add"):
        _ = done + 1


def _worst_shortfalls(scale: float, splits: int) -> dict[str, list[float]]:
    """Per random split, pcee_lcb's worst shortfall δ − early accuracy (0 if none) over a grid,
    on the paper's all-input bins and on survivor bins."""
    deltas = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    pool = synthetic_trace(6000, 8, 10, seed=0).scaled(scale)
    worst: dict[str, list[float]] = {"all inputs": [], "survivors": []}
    for split in range(splits):
        order = torch.randperm(pool.num_inputs, generator=torch.Generator().manual_seed(split))
        calibration, test = pool.subset(order[:3000]), pool.subset(order[3000:])
        paper = adaptix.calibrate(calibration)
        survivors = calibrate_survivors(calibration, deltas, "pcee_lcb")
        for name, make in (
            ("all inputs", lambda d: adaptix.policy("pcee_lcb", d, paper)),  # noqa: B023  # used at once
            ("survivors", survivors.policy),
        ):
            shortfall = 0.0
            for delta in deltas:
                early = adaptix.simulate(test, make(delta)).early_accuracy
                if early is not None and not math.isnan(early):
                    shortfall = max(shortfall, delta - early)
            worst[name].append(shortfall)
    return worst


def test_survivor_bins_fall_short_less_on_an_overconfident_trace() -> None:
    """Logits × 3 of a synthetic 8-exit trace, 10 random splits of 3,000 / 3,000, δ = 0.4 …
    0.9, pcee_lcb at α = 0.05 per bin. Measured: on all-input bins 7 splits of 10 fall short
    (worst 1.7 pt); on survivor bins none."""
    worst = _worst_shortfalls(3.0, splits=10)
    paper, survivors = torch.tensor(worst["all inputs"]), torch.tensor(worst["survivors"])
    assert int((paper > 0).sum()) >= 4
    assert int((survivors > 0).sum()) < int((paper > 0).sum())
    assert float(survivors.max()) < float(paper.max())


class _NextExitPCEE(PCEE):
    """A table that reads the next exit too (each bin pooled with the same bin one exit later):
    counting exit e + 1 changes exit e's decisions, so one process must count again."""

    name = "pcee_next_exit"
    description = "bin accuracy pooled with the next exit's (a test criterion)"

    @classmethod
    def bin_table(
        cls, params: ParamsModel, counts: torch.Tensor, correct: torch.Tensor
    ) -> torch.Tensor:
        later = torch.nn.functional.pad(counts[..., 1:, :], (0, 0, 0, 1))
        right = torch.nn.functional.pad(correct[..., 1:, :], (0, 0, 0, 1))
        return bin_accuracy(counts + later, correct + right)


def test_one_process_counts_again_when_a_table_reads_later_exits(manager_with) -> None:
    """`calibrate_survivors` counts only the new exit each round for a table per exit, and from
    the first changed decision otherwise: it equals the shard path (a fresh count per round)."""
    manager = manager_with(_NextExitPCEE)
    trace = synthetic_trace(600, 5, 6, seed=5).scaled(2.0)
    whole = calibrate_survivors(trace, DELTAS, "pcee_next_exit", plugins=manager)
    counts = SurvivorCounts.empty(
        DELTAS, "pcee_next_exit", num_exits=5, num_classes=6, plugins=manager
    )
    rounds = []
    for _ in range(trace.num_exits):
        counts = count_survivors(trace, counts, plugins=manager)
        rounds.append(counts)
    assert torch.equal(counts.counts, whole.counts)
    assert torch.equal(counts.correct, whole.correct)
    assert torch.equal(counts.confidence_sum, whole.confidence_sum)
    # The case is the one meant: some round changed an earlier exit's counts.
    assert any(
        not torch.equal(before.counts[:, : before.counted], after.counts[:, : before.counted])
        for before, after in itertools.pairwise(rounds)
    )
