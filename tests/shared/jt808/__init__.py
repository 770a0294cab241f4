"""Tests of shared.jt808; helpers that read the reference vectors in place (never copied).

The vectors live in ``../shared/data/jt808/vectors.json`` (terminal side) and
``downlink_vectors.json`` (platform commands and their answers) beside the repository, or under
``$TTI_SHARED_DIR``. When they are missing a test skips locally and fails in CI (``CI=true``).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import missing_reference

REPO = Path(__file__).resolve().parents[3]

Vector = dict[str, Any]


def vectors_file(name: str = "vectors.json") -> Path:
    """Where vectors.json (or ``name`` beside it) should be."""
    base = Path(os.environ.get("TTI_SHARED_DIR") or REPO.parent / "shared")
    return base / "data" / "jt808" / name  # same rule as tests.conftest


@functools.cache
def _load(name: str = "vectors.json") -> tuple[Vector, ...] | None:
    path = vectors_file(name)
    if not path.is_file():
        return None
    return tuple(json.loads(path.read_text(encoding="utf-8")))


def missing_vectors(name: str = "vectors.json") -> None:
    """Fail in CI, skip elsewhere: the reference data folder is absent."""
    missing_reference(f"JT/T 808 vectors at {vectors_file(name)}")


DOWNLINK = "downlink_vectors.json"


def downlink_vectors() -> tuple[Vector, ...]:
    """Every vector of downlink_vectors.json; skips or fails the test when it is missing."""
    vectors = _load(DOWNLINK)
    if vectors is None:
        missing_vectors(DOWNLINK)
        raise AssertionError("unreachable")
    return vectors


def downlink_params(keep: Callable[[Vector], bool] = lambda v: True) -> list[Any]:
    """``pytest.param`` per matching downlink vector; a single None without the file."""
    vectors = _load(DOWNLINK)
    if vectors is None:
        return [pytest.param(None, id="downlink-vectors-missing")]
    return [pytest.param(v, id=v["id"]) for v in vectors if keep(v)]


def require_downlink(vector: Vector | None) -> Vector:
    """The parameter itself, or skip/fail when it stands for the missing file."""
    if vector is None:
        missing_vectors(DOWNLINK)
        raise AssertionError("unreachable")
    return vector


def all_vectors() -> tuple[Vector, ...]:
    """Every vector; skips or fails the calling test when the file is missing."""
    vectors = _load()
    if vectors is None:
        missing_vectors()
        raise AssertionError("unreachable")
    return vectors


def get_vector(vector_id: str) -> Vector:
    """One vector by id (skip/fail when the file is missing)."""
    for vector in all_vectors():
        if vector["id"] == vector_id:
            return vector
    raise KeyError(vector_id)


def vector_params(keep: Callable[[Vector], bool]) -> list[Any]:
    """``pytest.param`` per matching vector (id = vector id).

    Without the file, a single ``None`` parameter whose test must call :func:`require`.
    """
    vectors = _load()
    if vectors is None:
        return [pytest.param(None, id="vectors-missing")]
    return [pytest.param(v, id=v["id"]) for v in vectors if keep(v)]


def require(vector: Vector | None) -> Vector:
    """The parameter itself, or skip/fail when it stands for the missing file."""
    if vector is None:
        missing_vectors()
        raise AssertionError("unreachable")
    return vector
