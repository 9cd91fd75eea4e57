"""Suite-wide: the longest test files start first.

``make test`` spreads whole files over the cores (pytest-xdist ``--dist loadfile``) in collection
order; a long file that happens to come last runs alone while the other cores idle. Putting the
long ones first (longest-processing-time-first) evens out the end of the run. Measured with
``pytest --durations=0``; the order only matters for time, never for results.
"""

from __future__ import annotations

# longest first (seconds on 2 cores, 2026-12-07); every other file keeps its place after them
LONG_FILES = (
    "tests/core/test_int8.py",  # 77
    "tests/app/test_app_soak.py",  # 31: the real app for 30 s
    "tests/training/test_blip2_smoke.py",  # 29
    "tests/training/test_demo_model.py",  # 29
    "tests/training/test_pretrain.py",  # 27
    "tests/hostile/test_hostile_library.py",  # 22
    "tests/app/test_app_main_window.py",  # 18
    "tests/training/test_finetune_evaluate.py",  # 16
)


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: files keep their order
