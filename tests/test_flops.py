"""`FlopProfile`: cumulative exit costs, and profiles that cannot describe a model refused."""

from __future__ import annotations

import math

import pytest

from adaptix import ValidationError
from adaptix.core.flops import FlopProfile


def test_costs_of_a_profile() -> None:
    profile = FlopProfile((4.0, 6.0), (1.0, 2.0))
    assert profile.exit_costs == [5.0, 13.0]
    assert profile.static_costs() == [5.0, 12.0]
    assert profile.plain_cost == 12.0
    assert (profile + profile).blocks == (8.0, 12.0)
    assert profile.scaled(0.5).heads == (0.5, 1.0)


@pytest.mark.parametrize(
    ("blocks", "heads", "message"),
    [
        ((), (), "per exit .at least one exit., got 0 blocks and 0 heads"),
        ((1.0, 2.0), (1.0,), "got 2 blocks and 1 heads"),
        ((1.0, math.nan), (1.0, 1.0), "finite, non-negative FLOP counts, got nan"),
        ((1.0, 2.0), (math.inf, 1.0), "got inf"),
        ((1.0, -2.0), (1.0, 1.0), "got -2.0"),
        ((1.0, "2"), (1.0, 1.0), "got '2'"),
        ((True,), (1.0,), "got True"),
    ],
    ids=["empty", "lengths", "nan", "inf", "negative", "string", "bool"],
)
def test_a_profile_that_cannot_describe_a_model_is_refused(blocks, heads, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        FlopProfile(blocks, heads)


def test_profiles_of_different_models_do_not_add() -> None:
    with pytest.raises(ValidationError, match="same number of exits to add, got 2 and 1"):
        FlopProfile((1.0, 2.0), (1.0, 1.0)) + FlopProfile((1.0,), (1.0,))


@pytest.mark.parametrize("factor", [math.nan, -1.0])
def test_scaling_by_a_bad_factor_is_refused(factor: float) -> None:
    with pytest.raises(ValidationError, match="finite, non-negative FLOP counts"):
        FlopProfile((1.0,), (1.0,)).scaled(factor)
