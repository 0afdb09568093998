"""The one validation vocabulary of fusednn: dtypes, and checkers that name the argument.

Every public op and module checks its arguments through an ``Args`` made with its own
name, so every message has one form::

    fusednn.ops.lstm: w_hh must be [4H, H] = (24, 6); got shape (24, 5)

``<where>: <argument> must be <expected>; got <actual>``. The exception types follow
Python's convention: a value of the wrong type (or dtype) raises TypeError, a value of
the right type that is out of range or of the wrong shape raises ValueError, and an
unsupported combination raises NotImplementedError. Where torch raises RuntimeError for
the same mistake, code written for torch catches ours too: the classes raised derive
from RuntimeError as well (``ArgumentError``, ``ArgumentTypeError``; NotImplementedError
is a RuntimeError already).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Optional, Sequence

import torch

# The floating dtypes fusednn's ops take.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
LOW_PRECISION = (torch.float16, torch.bfloat16)


class ArgumentError(ValueError, RuntimeError):
    """An argument of the right type with a wrong value, shape or size."""


class ArgumentTypeError(TypeError, RuntimeError):
    """An argument of the wrong type or dtype."""


class ArgumentAssertionError(ArgumentError, AssertionError):
    """A wrong argument where torch's module asserts (its MultiheadAttention checks shapes with
    assert on its default path and raises RuntimeError on its fast path): catchable as either,
    and as ValueError."""


_RAISED = {ValueError: ArgumentError, TypeError: ArgumentTypeError, AssertionError: ArgumentAssertionError}


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype statistics, states and sums are kept in: float64 for float64, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    """'float32' for torch.float32."""
    return str(dtype).replace("torch.", "")


def dtype_list(dtypes: Iterable[torch.dtype]) -> str:
    """'float16, bfloat16 or float32'."""
    names = [dtype_name(d) for d in dtypes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def describe(value: Any) -> str:
    """How a message shows a value that is not what was expected."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} and dtype {dtype_name(value.dtype)}"
    if value is None or isinstance(value, (bool, numbers.Number, str)):
        return repr(value)
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    module = type(value).__module__
    prefix = "" if module == "builtins" else module.split(".")[0] + "."
    return f"a {prefix}{type(value).__qualname__}"


def shape_of(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}"


class Args:
    """Checks the arguments of one public function; ``where`` starts every message
    (``"fusednn.ops.lstm"``, ``"fusednn.nn.LSTMCell"``)."""

    def __init__(self, where: str):
        self.where = where

    # ------------------------------------------------------------------ the message

    def error(self, argument: str, expected: str, got: str, kind: type = ValueError, *,
              torch_message: Optional[str] = None) -> Exception:
        """The exception to raise: ``<where>: <argument> must be <expected>; got <got>``.
        ``kind`` ValueError or TypeError (raised as ArgumentError / ArgumentTypeError).
        ``torch_message``: what torch's twin says for the same mistake, appended in brackets
        so that code matching torch's message text matches ours too."""
        message = f"{self.where}: {argument} must be {expected}; got {got}"
        if torch_message:
            message += f" [{torch_message}]"
        return _RAISED.get(kind, kind)(message)

    def unsupported(self, what: str) -> NotImplementedError:
        return NotImplementedError(f"{self.where}: {what}")

    # ------------------------------------------------------------------ tensors

    def tensor(
        self,
        name: str,
        t: Any,
        shape_doc: str = "",
        *,
        ndim: Optional[int | Sequence[int]] = None,
        dtypes: Optional[Sequence[torch.dtype]] = FLOAT_DTYPES,
        like: Optional[torch.Tensor] = None,
        like_name: str = "",
        same_dtype: bool = True,
        same_device: bool = True,
        optional: bool = False,
    ) -> Optional[torch.Tensor]:
        """A tensor argument: its type, dtype (one of ``dtypes``, or ``like``'s when
        ``same_dtype``), device (``like``'s when ``same_device``) and rank (``ndim``).
        ``shape_doc`` (``"[T, B, I]"``) is shown in rank errors. None passes when ``optional``."""
        doc = f" {shape_doc}" if shape_doc else ""
        if t is None and optional:
            return None
        if not isinstance(t, torch.Tensor):
            expected = "a tensor" + doc + (" or None" if optional else "")
            raise self.error(name, expected, describe(t), TypeError)
        if like is not None and same_dtype:
            if t.dtype != like.dtype:
                raise self.error(name, f"of {like_name}'s dtype {dtype_name(like.dtype)}", dtype_name(t.dtype),
                                 TypeError)
        elif dtypes is not None and t.dtype not in dtypes:
            raise self.error(name, dtype_list(dtypes), dtype_name(t.dtype), TypeError)
        if like is not None and same_device and t.device != like.device:
            raise self.error(name, f"on {like_name}'s device {like.device}", str(t.device))
        if ndim is not None:
            allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
            if t.dim() not in allowed:
                ranks = " or ".join(f"{n}-D" for n in allowed)
                raise self.error(name, f"{ranks}{doc}", shape_of(t))
        return t

    def shape(self, name: str, t: torch.Tensor, expected: Sequence[int], shape_doc: str = "") -> None:
        """``t`` has exactly the shape ``expected`` (shown as ``shape_doc = expected``)."""
        if tuple(t.shape) != tuple(expected):
            doc = f"{shape_doc} = {tuple(expected)}" if shape_doc else f"of shape {tuple(expected)}"
            raise self.error(name, doc, shape_of(t))

    # ------------------------------------------------------------------ scalars

    def integer(self, name: str, value: Any, *, minimum: Optional[int] = None, maximum: Optional[int] = None,
                ) -> int:
        """An int (a bool is not one) in [minimum, maximum]."""
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise self.error(name, "an int", describe(value), TypeError)
        value = int(value)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise self.error(name, _range_doc("an int", minimum, maximum, True, True), repr(value))
        return value

    def real(self, name: str, value: Any, *, minimum: Optional[float] = None, maximum: Optional[float] = None,
             min_inclusive: bool = True, max_inclusive: bool = True, finite: bool = True) -> float:
        """A real number (a bool is not one) in the given range; NaN never passes."""
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise self.error(name, "a float", describe(value), TypeError)
        value = float(value)
        in_range = not math.isnan(value) and not (finite and math.isinf(value))
        if minimum is not None:
            in_range &= value >= minimum if min_inclusive else value > minimum
        if maximum is not None:
            in_range &= value <= maximum if max_inclusive else value < maximum
        if not in_range:
            what = "a finite float" if finite else "a float"
            raise self.error(name, _range_doc(what, minimum, maximum, min_inclusive, max_inclusive), repr(value))
        return value

    def boolean(self, name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.error(name, "a bool", describe(value), TypeError)
        return value

    def choice(self, name: str, value: Any, choices: Sequence[Any]) -> Any:
        if value not in choices:
            raise self.error(name, "one of " + ", ".join(repr(c) for c in choices), repr(value))
        return value

    def int_list(self, name: str, value: Any, shape_doc: str = "") -> list[int]:
        """A 1-D integer tensor or a sequence of ints, as a list."""
        doc = f" {shape_doc}" if shape_doc else ""
        if isinstance(value, torch.Tensor):
            if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
                raise self.error(name, f"integers{doc}", f"a tensor of dtype {dtype_name(value.dtype)}", TypeError)
            if value.dim() != 1:
                raise self.error(name, f"1-D{doc}", shape_of(value))
            return [int(v) for v in value.tolist()]
        if isinstance(value, Sequence) and not isinstance(value, str):
            items = list(value)
            bad = [v for v in items if not isinstance(v, numbers.Integral) or isinstance(v, bool)]
            if bad:
                raise self.error(name, f"a list of ints{doc}", f"an element {describe(bad[0])}", TypeError)
            return [int(v) for v in items]
        raise self.error(name, f"a 1-D integer tensor or a list of ints{doc}", describe(value), TypeError)


def _range_doc(what: str, minimum, maximum, min_inclusive: bool, max_inclusive: bool) -> str:
    if minimum is not None and maximum is not None:
        return f"{what} in {'[' if min_inclusive else '('}{minimum}, {maximum}{']' if max_inclusive else ')'}"
    if minimum is not None:
        return f"{what} {'>=' if min_inclusive else '>'} {minimum}"
    if maximum is not None:
        return f"{what} {'<=' if max_inclusive else '<'} {maximum}"
    return what
