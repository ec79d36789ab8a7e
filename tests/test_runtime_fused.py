"""The runner's fused exit decision (reference on CPU, Triton kernel where it runs) decides
exactly like the criteria's own scores, so the runtime still agrees with the simulation."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import adaptix

FUSED = ["confidence", "entropy", "pcee", "pcee_ws"]


def _model_and_inputs() -> tuple[adaptix.MultiExitModel, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    blocks = nn.ModuleList(nn.Sequential(nn.Linear(16, 16), nn.Tanh()) for _ in range(4))
    heads = nn.ModuleList(nn.Linear(16, 7) for _ in range(4))
    x = torch.randn(300, 16) * 2
    y = torch.randint(0, 7, (300,))
    return adaptix.MultiExitModel(blocks, heads).eval(), x, y


def _median_threshold(name: str, trace: adaptix.Trace, calibration: adaptix.Calibration) -> float:
    scores = adaptix.policy(name, 0.5, calibration).scores(trace.logits)[:, :-1]
    finite = scores[torch.isfinite(scores)]
    return float(finite.median())


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("mode", ["compact", "lockstep"])
def test_fused_reference_decides_like_the_criterion(name: str, mode: str) -> None:
    model, x, y = _model_and_inputs()
    trace = model.trace(x, y)
    calibration = adaptix.calibrate(trace)
    policy = adaptix.policy(name, _median_threshold(name, trace, calibration), calibration)
    fused = adaptix.EarlyExitRunner(model, policy, mode=mode, backend="torch")(x)
    plain = adaptix.EarlyExitRunner(model, policy, mode=mode, fused=False)(x)
    simulated = adaptix.simulate(trace, policy)
    assert len(set(simulated.exit_index.tolist())) >= 2, "threshold should spread the exits"
    assert torch.equal(fused.exit_index, plain.exit_index)
    assert torch.equal(fused.predictions, plain.predictions)
    assert torch.equal(fused.exit_index, simulated.exit_index)


def test_explicit_triton_backend_on_cpu_fails_with_reasons() -> None:
    model, x, _ = _model_and_inputs()
    policy = adaptix.policy("confidence", 0.5)
    runner = adaptix.EarlyExitRunner(model, policy, backend="triton")
    env_interpret = os.environ.get("TRITON_INTERPRET")
    if env_interpret == "1":
        pytest.skip("TRITON_INTERPRET=1 makes CPU tensors runnable by the kernel")
    with pytest.raises(adaptix.AdaptixError, match="cuda"):
        runner(x)


def test_triton_kernel_in_the_runner_decides_like_the_criterion() -> None:
    """The Triton kernel under the interpreter (a subprocess: TRITON_INTERPRET must be set
    before triton is first imported), inside the runner, against the unfused path."""
    pytest.importorskip("triton")
    script = textwrap.dedent(
        """
        import torch, adaptix
        from tests.test_runtime_fused import FUSED, _median_threshold, _model_and_inputs
        model, x, y = _model_and_inputs()
        x, y = x[:64], y[:64]
        trace = model.trace(x, y)
        calibration = adaptix.calibrate(trace)
        for name in FUSED:
            t = _median_threshold(name, trace, calibration)
            policy = adaptix.policy(name, t, calibration)
            kernel = adaptix.EarlyExitRunner(model, policy, backend="triton")(x)
            plain = adaptix.EarlyExitRunner(model, policy, fused=False)(x)
            assert torch.equal(kernel.exit_index, plain.exit_index), name
            assert torch.equal(kernel.predictions, plain.predictions), name
        print("agree", len(FUSED))
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": root}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
        cwd=root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"agree {len(FUSED)}" in done.stdout
