"""The built-in ``msdnet`` backbone's parameters: exit pooling and channel widening."""

from __future__ import annotations

import pytest
import torch

import adaptix


def _model(**params: object) -> adaptix.MultiExitModel:
    torch.manual_seed(0)
    return adaptix.build_model(
        "msdnet", 10, head="linear", backbone_params={"base_channels": 4, "blocks": 3, **params}
    )


@pytest.mark.parametrize(("pool", "widen"), [(1, 2), (3, 2), (2, 3)])
def test_exit_features_are_the_coarsest_scale_pooled_to_the_grid(pool: int, widen: int) -> None:
    model = _model(pool=pool, widen=widen).eval()
    coarsest = 4 * widen**2  # three scales: base, base * widen, base * widen**2 channels
    x = torch.randn(5, 1, 28, 28)
    with torch.inference_mode():
        state = model.run_block(0, x)
        features = model.features(state)
    assert state[-1].shape[1] == coarsest
    expected = torch.nn.functional.adaptive_avg_pool2d(state[-1], pool).flatten(1)
    torch.testing.assert_close(features, expected)
    assert features.shape == (5, coarsest * pool**2)
    assert [logits.shape for logits in model(x)] == [torch.Size([5, 10])] * 3


def test_pooling_keeps_where_a_feature_fired() -> None:
    """A global average cannot tell a feature on the left from one on the right; 2 x 2 can."""
    pool = _model(pool=2).feature
    left, right = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    left[..., :2], right[..., 2:] = 1.0, 1.0
    assert pool((left,)).tolist() != pool((right,)).tolist()
    assert _model(pool=1).feature((left,)).tolist() == _model(pool=1).feature((right,)).tolist()


@pytest.mark.parametrize("params", [{"pool": 0}, {"pool": 5}, {"widen": 0}, {"widen": 5}])
def test_out_of_range_parameters_are_refused(params: dict[str, int]) -> None:
    with pytest.raises(adaptix.ValidationError):
        _model(**params)
