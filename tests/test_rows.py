"""`adaptix.core.rows.take_rows`: the row selection the runtime compacts every state with."""

from __future__ import annotations

import pytest
import torch

from adaptix.core.rows import take_rows


def nest() -> dict[str, object]:
    generator = torch.Generator().manual_seed(0)
    return {
        "hidden": torch.randn(6, 3, 4, generator=generator),
        "mask": torch.randint(0, 2, (6, 3), generator=generator),
        "pair": (torch.arange(6), [torch.randn(6, 2, generator=generator)]),
        "name": "kept as is",
    }


@pytest.mark.parametrize(
    "index",
    [
        torch.tensor([4, 0, 5], dtype=torch.int64),
        torch.tensor([1, 1, 2], dtype=torch.int32),
        torch.tensor([], dtype=torch.int64),
        torch.tensor([True, False, True, False, False, True]),
        slice(1, 4),
    ],
    ids=["int64", "int32-repeated", "empty", "bool-mask", "slice"],
)
def test_every_tensor_of_the_nest_gets_the_same_rows(index: torch.Tensor | slice) -> None:
    batch = nest()
    taken = take_rows(batch, index)
    assert torch.equal(taken["hidden"], batch["hidden"][index])  # type: ignore[index]
    assert torch.equal(taken["mask"], batch["mask"][index])  # type: ignore[index]
    assert torch.equal(taken["pair"][0], batch["pair"][0][index])  # type: ignore[index]
    assert torch.equal(taken["pair"][1][0], batch["pair"][1][0][index])  # type: ignore[index]
    assert isinstance(taken["pair"], tuple)
    assert isinstance(taken["pair"][1], list)
    assert taken["name"] == "kept as is"


def test_selected_rows_are_a_copy() -> None:
    hidden = torch.zeros(4, 2)
    taken = take_rows(hidden, torch.tensor([0, 2]))
    taken += 1
    assert float(hidden.sum()) == 0.0
