"""The shortcuts the invariants take on small steps give exactly what the general operations give."""

from __future__ import annotations

import torch

from grpo_check.invariants._common import Groups, scalar_like, where_fill

_BITS = {torch.float32: torch.int32, torch.float64: torch.int64}


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bits (NaN = NaN, 0.0 ≠ −0.0)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype in _BITS:
        return torch.equal(a.view(_BITS[a.dtype]), b.view(_BITS[b.dtype]))
    return torch.equal(a, b)


def test_groups_of_a_few_rows_match_the_general_path() -> None:
    ids = torch.tensor([7, 7, 3, 3, 9, 7])
    small = Groups(ids)
    values, inverse, count = torch.unique(ids, return_inverse=True, return_counts=True)
    assert _same(small.values, values) and _same(small.inverse, inverse) and _same(small.count, count)
    assert small.largest == 3
    assert small.sum(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])).tolist() == [7.0, 9.0, 5.0]


def test_scalar_like_operands_give_the_python_number_results() -> None:
    generator = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(64, generator=generator, dtype=dtype) * 1e3
        x[:4] = torch.tensor([0.1, 1e-3, -0.0, float("inf")], dtype=dtype)
        for number in (0.1, 1e-3, 0.0, 1.0000001, 65504.0):
            operand = scalar_like(number, x)
            assert isinstance(operand, torch.Tensor) and operand.dtype == dtype
            assert _same(x > operand, x > number) and _same(x <= operand, x <= number)
            assert _same(x * operand, x * number) and _same(x - operand, x - number)
    bits = (torch.randn(64, generator=generator)).view(torch.int32)
    assert _same(bits & scalar_like(0xFFFF, bits), bits & 0xFFFF)
    assert _same(bits == scalar_like(0, bits), bits == 0)
    half = torch.ones(3, dtype=torch.bfloat16)
    assert scalar_like(0.1, half) == 0.1  # 16-bit floats compute with the number in float32: left as is


def test_where_fill_is_torch_where() -> None:
    values = torch.tensor([1.5, -2.0, float("nan"), -0.0], dtype=torch.float32)
    condition = torch.tensor([True, False, True, False])
    for fill in (0.0, -1.0, -torch.inf, torch.inf):
        assert _same(where_fill(condition, values, fill), torch.where(condition, values, fill)) or (
            torch.equal(
                where_fill(condition, values, fill).isnan(), torch.where(condition, values, fill).isnan()
            )
        )
    ints = torch.tensor([1, 2, 3, 4])
    assert _same(where_fill(condition, ints, -1.0), torch.where(condition, ints, -1.0))
