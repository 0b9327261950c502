"""Per-step memo shared by the checks of one step: float64 copies, masks and intermediate tensors.

``compare_step`` and ``run_invariants`` each open a :func:`step_cache` for the step they check, or join one
already open for the same step, so checking one captured step shares its float64 copies between the
comparison, the diagnoses and the invariants. Outside a cache nothing is memoised.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

_T = TypeVar("_T")


class _Memo(dict):  # type: ignore[type-arg]
    """The open cache: memoised values by key, and the step it was opened for (kept alive while open)."""

    def __init__(self, owner: object | None) -> None:
        super().__init__()
        self.owner = owner


# torch.inference_mode(mode) as a context manager: the C++ guard it enters, without its Python wrapper's
# object and calls (used around every checked step and every float64 copy made under inference mode)
inference_guard: Callable[[bool], Any] = getattr(torch._C, "_InferenceMode", torch.inference_mode)

_STEP_CACHE: contextvars.ContextVar[_Memo | None] = contextvars.ContextVar(
    "grpo_check_step_cache", default=None
)
_current_memo = _STEP_CACHE.get  # the open cache or None (bound once: looked up a few hundred times per step)


class step_cache:
    """Share intermediate tensors (float64 copies, masks, ratios) between the checks run on ONE step.

    Given the ``step``, a cache already open for that same step object is joined instead of opening a new
    one: the comparison, the diagnoses and the invariants of one captured step share their float64 copies.
    Cached tensors are shared: callers must never modify them in place. (A class rather than a generator
    context manager: it is entered several times per checked step, and this costs less.)

    >>> with step_cache():
    ...     x = torch.ones(2)
    ...     f64(x) is f64(x)
    True
    """

    __slots__ = ("_step", "_token")

    def __init__(self, step: object | None = None) -> None:
        self._step = step
        self._token: contextvars.Token[_Memo | None] | None = None

    def __enter__(self) -> None:
        current = _STEP_CACHE.get()
        if self._step is not None and current is not None and current.owner is self._step:
            return  # joined: the cache stays open until its opener leaves
        self._token = _STEP_CACHE.set(_Memo(self._step))

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _STEP_CACHE.reset(self._token)
            self._token = None


def cached(key: tuple[Any, ...], compute: Callable[[], _T]) -> _T:
    """``compute()``, memoised in the open :func:`step_cache` (computed every time when none is open).

    Tensors in ``key`` are identified by object identity and kept alive by the cache (an id cannot be reused
    while it is open); the entry records their in-place version counters, and an entry made at another
    version is a miss (computed again). Do not key one name both by a tensor and by that tensor's ``id``.
    """
    memo = _current_memo()
    if memo is None:
        return compute()
    # a tensor part is keyed by its id, its version counter (None: an inference tensor, which has none and
    # stays one) kept in the entry and compared on a hit: no is_inference() per look-up. A key without
    # tensors (most are a name and a step id) is its own memo key. The exact-type tests are the fast path,
    # isinstance catches subclasses; (name, part) and (name, part, part) keys, the most common shapes, are
    # keyed without a loop (the same memo keys and entries as _cached_by_tensors makes)
    length = len(key)
    if length == 3 and type(key[0]) is str:
        first, second = key[1], key[2]
        kind = type(first)
        first_is_tensor = kind is _Tensor or (kind not in _NOT_TENSORS and isinstance(first, _Tensor))
        kind = type(second)
        second_is_tensor = kind is _Tensor or (kind not in _NOT_TENSORS and isinstance(second, _Tensor))
        if first_is_tensor and second_is_tensor:
            memo_key = (key[0], id(first), id(second))
            hit = memo.get(memo_key)
            if hit is not None:
                versions = hit[2]
                version = versions[0]
                if version is None or version == first._version:
                    version = versions[1]
                    if version is None or version == second._version:
                        return hit[0]
            versions = [
                None if first.is_inference() else first._version,
                None if second.is_inference() else second._version,
            ]
            value = compute()
            memo[memo_key] = (value, key, versions)
            return value
        if first_is_tensor or second_is_tensor:
            tensor = first if first_is_tensor else second
            memo_key = (key[0], id(first), second) if first_is_tensor else (key[0], first, id(second))
            hit = memo.get(memo_key)
            if hit is not None:
                version = hit[2][0]
                if version is None or version == tensor._version:
                    return hit[0]
            versions = [None if tensor.is_inference() else tensor._version]
            value = compute()
            memo[memo_key] = (value, key, versions)
            return value
    elif length == 2 and type(key[0]) is str:
        part = key[1]
        kind = type(part)
        if kind is _Tensor or (kind not in _NOT_TENSORS and isinstance(part, _Tensor)):
            memo_key: tuple[Any, ...] = (key[0], id(part))
            hit = memo.get(memo_key)
            if hit is not None:
                version = hit[2]
                if version is None or version == part._version:
                    return hit[0]
            version = None if part.is_inference() else part._version
            value = compute()
            memo[memo_key] = (value, key, version)
            return value
    else:
        for part in key:  # (inlined: most longer keys hold no tensor)
            kind = type(part)
            if kind is _Tensor or (kind not in _NOT_TENSORS and isinstance(part, _Tensor)):
                return _cached_by_tensors(memo, key, compute)
    hit = memo.get(key)
    if hit is None:
        hit = memo[key] = (compute(), key)
    return hit[0]


def _cached_by_tensors(memo: _Memo, key: tuple[Any, ...], compute: Callable[[], _T]) -> _T:
    """:func:`cached` for a key of several parts, some of them tensors (a few dozen per step)."""
    parts = []
    tensors = []
    for item in key:
        kind = type(item)
        if kind is _Tensor or (kind not in _NOT_TENSORS and isinstance(item, _Tensor)):
            parts.append(id(item))
            tensors.append(item)
        else:
            parts.append(item)
    memo_key = tuple(parts)
    hit = memo.get(memo_key)
    if hit is not None:
        for tensor, version in zip(tensors, hit[2], strict=True):
            if version is not None and version != tensor._version:
                break
        else:
            return hit[0]
    versions = [None if tensor.is_inference() else tensor._version for tensor in tensors]
    value = compute()
    memo[memo_key] = (value, key, versions)
    return value


_Tensor = torch.Tensor
# the types of the key parts that are not tensors (found without an isinstance call)
_NOT_TENSORS = frozenset({str, int, float, bool, tuple, type(None), torch.dtype, torch.device, torch.Size})


def plain(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor.detach()``, without the new tensor object (an operation) when it is not part of a graph."""
    return tensor.detach() if tensor.requires_grad else tensor


def bool_mask(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` as bool, shared between the checks of one step (the comparison's and the invariants' token
    masks are this one tensor)."""
    memo = _current_memo()  # cached(("bool", mask), ...), inlined: several calls per step
    if memo is None:
        return plain(mask).bool()
    memo_key = ("bool", id(mask))
    hit = memo.get(memo_key)
    if hit is not None:
        version = hit[2]
        if version is None or version == mask._version:
            return hit[0]
    version = None if mask.is_inference() else mask._version
    value = plain(mask).bool()
    memo[memo_key] = (value, ("bool", mask), version)
    return value


def all_true_like(like: torch.Tensor) -> torch.Tensor:
    """An all-True bool mask of ``like``'s shape and device, shared between the checks of one step."""
    return cached(
        ("ones", tuple(like.shape), str(like.device)),
        lambda: torch.ones(like.shape, dtype=torch.bool, device=like.device),
    )


def f64(tensor: torch.Tensor) -> torch.Tensor:
    """Detached float64 copy for evaluating a check (the tensor's own dtype drives the tolerance).

    Shared between the checks of one step (see :func:`step_cache`): never modify it in place.
    """
    memo = _current_memo()
    if memo is None:
        return _f64_copy(tensor)
    # cached(("f64", tensor), ...) inlined, same key and entry: this runs a few dozen times per checked step
    memo_key = ("f64", id(tensor))
    hit = memo.get(memo_key)
    if hit is not None:
        version = hit[2]
        if version is None or version == tensor._version:
            return hit[0]
    version = None if tensor.is_inference() else tensor._version
    copy = _f64_copy(tensor)
    memo[memo_key] = (copy, ("f64", tensor), version)
    return copy


def _f64_copy(tensor: torch.Tensor) -> torch.Tensor:
    copy = tensor.detach() if tensor.requires_grad else tensor
    if copy.dtype is not torch.float64:
        # a normal tensor even when made under inference mode (the invariants): the comparison, sharing the
        # cache, may use it as a constant of its autograd graph. .double(): less call overhead than .to;
        # the context manager only where needed (it costs more than the copy of a small tensor)
        if torch.is_inference_mode_enabled():
            with inference_guard(False):
                copy = copy.double()
        else:
            copy = copy.double()
    memo = _current_memo()
    if (
        memo is not None
    ):  # cached(("source", copy), lambda: tensor), inlined: isfinite(copy) = isfinite(tensor)
        memo_key = ("source", id(copy))
        version = None if copy.is_inference() else copy._version
        hit = memo.get(memo_key)
        if hit is None or (hit[2] is not None and hit[2] != version):  # (an entry at this version stays)
            memo[memo_key] = (tensor, ("source", copy), version)
    return copy


def finite_mask(tensor: torch.Tensor) -> torch.Tensor:
    """``torch.isfinite(tensor)``, shared between the checks of one step (and with its float64 copy)."""
    source = cached(("source", tensor), lambda: tensor)  # the step tensor an f64 copy was made from
    return cached(("isfinite", source), lambda: _isfinite(plain(source)))


def _isfinite(tensor: torch.Tensor) -> torch.Tensor:
    """``torch.isfinite``: for floats as ``d == d`` with ``d = x − x`` (0 for finite x, NaN for ±inf and NaN),
    which is the same mask and about 3x faster than torch.isfinite on CPU (two tensor operations; a Python
    scalar operand would add a conversion of its own)."""
    if tensor.is_floating_point():
        difference = tensor - tensor
        return difference == difference
    return torch.isfinite(tensor)


# Up to this many elements, a check may evaluate a tensor through a numpy view (:func:`host_view`): numpy's
# float64 arithmetic, comparisons and counts are the same IEEE operations as torch's, at a fraction of
# torch's per-call overhead on small tensors; above it, torch's kernels (multi-threaded) win.
HOST_ELEMENTS = 16_384


def host_view(tensor: torch.Tensor) -> np.ndarray | None:
    """A numpy view of ``tensor`` (shared memory: never modify it) when it is a small CPU tensor outside any
    autograd graph, else ``None`` (evaluate it with torch).

    Shared between the checks of one step (see :func:`step_cache`): each ``Tensor.numpy()`` dispatches four
    no-op operations, so a tensor several checks read is viewed once.
    """
    memo = _current_memo()
    if memo is not None:
        # the tensor by identity and in-place version counter, as f64 keys it (the entry holds the tensor:
        # its id cannot be reused while the cache is open); a tensor viewed before passed the tests below
        memo_key = ("host_view", id(tensor))
        hit = memo.get(memo_key)
        if hit is not None and not tensor.requires_grad:
            version = hit[2]
            if version is None or version == tensor._version:
                return hit[0]
    # is_cpu: device.type == "cpu" without a device object
    if (
        tensor.is_cpu
        and tensor.dtype in _NUMPY_DTYPES
        and not tensor.requires_grad
        and tensor.numel() <= HOST_ELEMENTS
    ):
        if memo is None:
            return tensor.numpy()
        version = None if tensor.is_inference() else tensor._version
        view = tensor.numpy()
        memo[memo_key] = (view, tensor, version)
        return view
    return None


# the dtypes a CPU tensor shares with numpy (bfloat16 and the float8 formats have no numpy dtype)
_NUMPY_DTYPES = frozenset(
    {
        torch.float64,
        torch.float32,
        torch.float16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    }
)
