"""A user's CI guard for their early-exit model (adaptix's pytest plugin; see docs/testing.md).

Run it, save a baseline, then compare later runs against it::

    pytest examples/user_test_suite --benchmark-autosave
    pytest examples/user_test_suite --benchmark-compare --adaptix-ratio-fail=25%

The fixtures ``exit_benchmark`` and ``control_check`` come with adaptix (a pytest11 entry
point); ``model``, ``policy``, ``test_inputs``, ``test_labels`` and ``test_trace`` are this
suite's own (conftest.py).
"""

import pytest


def test_early_exit_speed(exit_benchmark, model, policy, test_inputs, test_labels):
    result = exit_benchmark(model, policy, test_inputs, labels=test_labels, batch_size=64)
    assert result.early_exit_rate > 0.3  # the policy still lets inputs leave early
    if result.realised_speedup is not None:  # None under --benchmark-disable
        assert result.realised_speedup > 1.0


def test_pcee_keeps_its_promise(control_check, policy, test_trace):
    control_check(test_trace, policy)  # early accuracy >= the policy's δ, on held-out data


def test_certificate_holds(control_check, deployment):
    report = control_check(deployment.test_trace, deployment.certified, min_early_exit_rate=0.2)
    assert report.source == "certificate"


@pytest.mark.parametrize("batch_size", [1, 256])
def test_speed_at_other_batch_sizes(exit_benchmark, model, policy, test_inputs, batch_size):
    rows = 64 if batch_size == 1 else 1024  # batch 1 costs a call per row: fewer rows
    result = exit_benchmark(model, policy, test_inputs[:rows], batch_size=batch_size, rounds=3)
    assert result.agreement.ok
