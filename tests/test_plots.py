"""`adaptix.experiment.plots`: every figure is written as a real PNG, with undefined points and
empty bins."""

from __future__ import annotations

import math
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

import adaptix
from adaptix import Calibration, ValidationError
from adaptix.experiment.plots import (
    DPI,
    plot_accuracy_vs_flops,
    plot_control,
    plot_control_panels,
    plot_reliability,
)
from adaptix.testing import synthetic_trace

matplotlib = pytest.importorskip("matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CURVES = {
    "confidence": [(0.5, 0.55), (0.6, 0.58), (0.7, None), (0.8, 0.79), (0.9, 0.86)],
    "pcee": [(0.5, 0.74), (0.6, 0.74), (0.7, 0.83), (0.8, None), (0.9, None)],
    "pcee_ws": [(0.9, None), (0.5, 0.7)],  # unsorted, mostly undefined
}


def _png_size(path: Path) -> tuple[int, int]:
    """Width and height of a PNG, checking its signature and that it is not a stub."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    assert len(data) > 10_000  # a drawn figure, not an empty canvas
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_plot_control_writes_a_png_and_skips_undefined_points(tmp_path: Path) -> None:
    path = plot_control(CURVES, tmp_path / "sub" / "control.png", title="Control")
    assert path == tmp_path / "sub" / "control.png"
    width, height = _png_size(path)
    assert 400 < width < 1000
    assert 400 < height < 1000


def test_plot_control_panels_draws_one_panel_each(tmp_path: Path) -> None:
    panels = {"natural": CURVES, "logits ×2": CURVES, "logits ×3": {"pcee": [(0.5, None)]}}
    one = _png_size(plot_control(CURVES, tmp_path / "one.png"))
    three = _png_size(plot_control_panels(panels, tmp_path / "three.png", title="Panels"))
    four = _png_size(plot_control_panels({**panels, "d": CURVES}, tmp_path / "four.png"))
    assert three[0] > 2.5 * one[0]  # side by side
    assert four[1] > 1.8 * three[1]  # a second row
    with pytest.raises(ValidationError, match="at least one panel"):
        plot_control_panels({}, tmp_path / "none.png")


def test_plot_accuracy_vs_flops(tmp_path: Path) -> None:
    path = plot_accuracy_vs_flops(
        tmp_path / "flops.png",
        models={"small": (2.0e6, 0.71), "large": (8.0e6, 0.83)},
        truncated={"large, fixed exit": [(2.5e6, 0.6), (1.0e6, 0.4), (8.0e6, 0.83)]},
        frontiers={"pcee": [(1.5e6, 0.7), (3.0e6, 0.8)], "confidence": [(1.2e6, 0.65)]},
        title="Accuracy against compute",
    )
    _png_size(path)
    _png_size(plot_accuracy_vs_flops(tmp_path / "only.png", models={"m": (1e9, 0.5)}))
    with pytest.raises(ValidationError, match="something to plot"):
        plot_accuracy_vs_flops(tmp_path / "nothing.png")


def test_plot_reliability_with_empty_bins(tmp_path: Path) -> None:
    calibration = adaptix.calibrate(synthetic_trace(200, num_exits=5, seed=3), bins=15)
    assert bool((calibration.counts == 0).any())  # confidences >= 1/C leave low bins empty
    width, height = _png_size(plot_reliability(calibration, tmp_path / "rel.png", title="R"))
    assert width > height  # 4 panels in a row, the fifth below
    # Tables without confidence sums: no confidence markers, ECE shown as n/a.
    counts = torch.tensor([[0, 5, 16, 0], [1, 0, 0, 20]])  # every exit counts 21 inputs
    bare = Calibration(counts, counts // 2, 4)
    _png_size(plot_reliability(bare, tmp_path / "bare.png"))


@pytest.mark.parametrize("method", ["reliability", "equal_mass"])
def test_reliability_bars_span_the_bins_own_edges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """Every non-empty bin's bar is centred in its bin and (nearly) as wide as it: equal-width
    bars for ``reliability``, quantile bins for ``equal_mass``; narrow bins get no count."""
    from matplotlib.axes import Axes

    bars: list[tuple[list[float], list[float]]] = []
    texts: list[str] = []
    real_bar, real_text = Axes.bar, Axes.text

    def bar(self: Axes, x: Any, height: Any, width: Any = 0.8, *args: Any, **kwargs: Any) -> Any:
        bars.append((list(x), list(width)))
        return real_bar(self, x, height, width, *args, **kwargs)

    def text(self: Axes, x: float, y: float, s: str, *args: Any, **kwargs: Any) -> Any:
        texts.append(s)
        return real_text(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(Axes, "bar", bar)
    monkeypatch.setattr(Axes, "text", text)
    calibration = adaptix.calibrate(synthetic_trace(400, num_exits=3, seed=3), method, 20)
    _png_size(plot_reliability(calibration, tmp_path / "rel.png"))
    assert len(bars) == calibration.num_exits
    labelled = 0
    for e, (centres, widths) in enumerate(bars):
        edges = calibration.edges[e].tolist()
        filled = [m for m in range(calibration.bins) if calibration.counts[e, m] > 0]
        assert centres == pytest.approx([(edges[m] + edges[m + 1]) / 2 for m in filled])
        bin_widths = [edges[m + 1] - edges[m] for m in filled]
        assert widths == pytest.approx([max(0.92 * w, 0.004) for w in bin_widths])
        labelled += sum(edges[m + 1] - edges[m] >= 0.02 for m in range(calibration.bins))
    assert len(texts) == labelled
    if method == "equal_mass":  # quantile bins: crowded confidences make narrow bins
        assert labelled < calibration.num_exits * calibration.bins


@pytest.mark.parametrize(
    ("plot", "message"),
    [
        (lambda path: plot_control({"c": [(math.nan, 0.6)]}, path), "'c' as"),
        (lambda path: plot_control({"c": [(0.5, math.inf)]}, path), "'c' as"),
        (lambda path: plot_control({"c": [(0.5,)]}, path), "'c' as"),
        (lambda path: plot_accuracy_vs_flops(path, models={"m": (0.0, 0.5)}), "FLOPs > 0"),
        (lambda path: plot_accuracy_vs_flops(path, frontiers={"f": [(1e6, None)]}), "FLOPs > 0"),
        (lambda path: plot_accuracy_vs_flops(path, truncated={"t": [(-1.0, 0.5)]}), "FLOPs > 0"),
        (lambda path: plot_reliability("calibration", path), "adaptix.Calibration"),
        (lambda path: plot_control(CURVES, path.parent), "writable folder"),
        (lambda path: plot_control(CURVES, "/proc/adaptix-nonexistent/x.png"), "writable folder"),
    ],
    ids=["nan", "inf", "not-a-pair", "zero-flops", "no-accuracy", "negative-flops",
         "not-a-calibration", "onto-a-directory", "unwritable"],
)  # fmt: skip
def test_bad_points_and_paths_are_validation_errors(
    plot: Any, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError, match=message):
        plot(tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_plots_leave_the_global_backend_and_figures_alone(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    plot_control(CURVES, tmp_path / "control.png")
    assert matplotlib.get_backend() == backend
    assert plt.get_fignums() == []
    assert DPI == 120


def test_plots_without_matplotlib_say_how_to_install(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["matplotlib"] = None  # as if matplotlib were not installed
        import adaptix
        from adaptix.experiment import plots
        try:
            plots.plot_control({{"pcee": [(0.5, 0.6)]}}, {str(tmp_path / "x.png")!r})
        except adaptix.AdaptixError as err:
            print(err)
        else:
            raise SystemExit("expected an AdaptixError")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "pip install matplotlib" in result.stdout
    assert not (tmp_path / "x.png").exists()
