"""Fast positional constructors for the frozen, slotted dataclasses built on the decode path.

A frozen dataclass's ``__init__`` stores each field with ``object.__setattr__``, which costs
about 150 ns per field on CPython 3.11: three of them (header, location report, message) would
eat half of the 10 µs we allow per 0x0200 frame. Here an unfrozen twin class with the same
``__slots__`` is filled with plain attribute stores (specialised, ~10 ns each) and then
relabelled with ``__class__ =`` — allowed because both classes have the identical slot layout.
The result is an ordinary instance of the frozen class (equal, hashable, immutable);
``tests/shared/jt808/test_vectors.py`` checks it against the regular constructor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def fast_constructor(cls: type[T]) -> Callable[..., T]:
    """Return ``make(*fields)`` building a ``cls`` instance, fields in declaration order."""
    names: tuple[str, ...] = tuple(cls.__slots__)  # type: ignore[attr-defined]
    twin = type(f"_{cls.__name__}Builder", (), {"__slots__": names})
    args = ", ".join(names)
    body = "".join(f"    o.{name} = {name}\n" for name in names)
    source = f"def make({args}):\n    o = new(twin)\n{body}    o.__class__ = cls\n    return o\n"
    namespace: dict[str, Any] = {"new": object.__new__, "twin": twin, "cls": cls}
    exec(source, namespace)  # the same technique dataclasses uses to build __init__
    make: Callable[..., T] = namespace["make"]
    make.__qualname__ = f"fast_constructor.<{cls.__name__}>"
    return make
