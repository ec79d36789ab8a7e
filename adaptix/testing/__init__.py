"""Contract tests for adaptix components: the checks adaptix applies to every registered
component, for plugin authors to run against their own.

Each check is a plain function that raises `AssertionError` with a message naming the component
and what broke, so it works under pytest, unittest or a bare script. A plugin author, in a test
of the plugin (with the plugin installed, e.g. ``pip install -e .``)::

    from adaptix.testing import check_criterion

    def test_margin_honours_the_criterion_contract():
        check_criterion("margin")

`contract_cases` lists (kind, name) for every registered component; `check_component` runs the
matching check, which is how adaptix's own suite covers built-ins and installed plugins alike::

    @pytest.mark.parametrize(("kind", "name"), contract_cases())
    def test_contract(kind, name):
        check_component(kind, name)

For users who guard a model of their own in CI (adaptix's pytest plugin runs these):
`ExitBenchmark` times the runner against the plain model in paired rounds, checks that it
decides as `adaptix.simulate` does and returns its realised and ideal speed-ups
(`SpeedResult`); `check_control` checks a policy's promise on a held-out trace
(`ControlReport`).

`synthetic_trace` builds the seeded traces the checks use (later exits more accurate), handy in
a plugin's own tests too.
"""

from adaptix.testing.contracts import (
    KINDS,
    UNKNOWN_PARAM,
    check_backbone,
    check_calibrator,
    check_component,
    check_criterion,
    check_exit_head,
    check_kv_strategy,
    contract_cases,
)
from adaptix.testing.control_check import ControlReport, check_control
from adaptix.testing.data import synthetic_trace
from adaptix.testing.decoder import tiny_decoder
from adaptix.testing.speed import ExitBenchmark, SpeedResult

__all__ = [
    "KINDS",
    "UNKNOWN_PARAM",
    "ControlReport",
    "ExitBenchmark",
    "SpeedResult",
    "check_backbone",
    "check_calibrator",
    "check_component",
    "check_control",
    "check_criterion",
    "check_exit_head",
    "check_kv_strategy",
    "contract_cases",
    "synthetic_trace",
    "tiny_decoder",
]
