"""One cache, one atomic writer, declared seed offsets (issue 21): checked on the source and in use."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from trilemma.cache import ProcessCache
from trilemma.files import atomic_write_text
from trilemma.seeds import SEED_OFFSETS, derived_seed

PACKAGE = Path(__file__).resolve().parents[1] / "trilemma"
SOURCES = {p.relative_to(PACKAGE).as_posix(): p.read_text() for p in PACKAGE.rglob("*.py")}


def test_the_process_cache_computes_once_and_resets():
    cache, calls = ProcessCache(), []
    compute = lambda: calls.append(1) or len(calls)  # noqa: E731
    assert cache.get("a", 1, compute) == 1 and cache.get("a", 1, compute) == 1 and cache.get("b", 1, compute) == 2
    assert cache.sizes() == {"a": 1, "b": 1}
    cache.clear("a")
    assert cache.get("a", 1, compute) == 3 and cache.get("b", 1, compute) == 2
    cache.clear()
    assert cache.sizes() == {}
    with pytest.raises(ZeroDivisionError):
        cache.get("c", 0, lambda: 1 / 0)
    assert cache.peek("c", 0) is None  # a failed compute caches nothing


def test_no_module_keeps_a_cache_of_its_own():
    pattern = re.compile(r"^_[A-Z_]+\s*(:\s*dict\[.*\])?\s*=\s*(\{\}|dict\(\))", re.MULTILINE)
    found = {name for name, text in SOURCES.items() if pattern.search(text) or "lru_cache" in text}
    assert found == set(), f"module-level caches outside trilemma.cache: {sorted(found)}"


def test_files_are_replaced_only_through_the_atomic_writer(tmp_path):
    replacing = {name for name, text in SOURCES.items() if "os.replace(" in text}
    assert replacing == {"files.py", "train.py"}  # train.py moves an unusable checkpoint aside
    assert all("torch.save(" not in text for name, text in SOURCES.items() if name != "files.py")
    target = tmp_path / "x.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_seed_offsets_are_declared_in_one_table():
    literal = re.compile(r"seed\s*\+\s*\d+")
    assert {name for name, text in SOURCES.items() if literal.search(text)} == set()
    assert derived_seed(10, "train_flop_steps") == 10 + SEED_OFFSETS["train_flop_steps"]
    assert len(set(SEED_OFFSETS.values()) - {0}) == len([v for v in SEED_OFFSETS.values() if v])  # no two share one
