"""Whether the suite runs as CI, where nothing may skip for want of a part (Docker, the Inspector, mounts).

CI services set `CI` to `true`, `1` or `yes` in any case; any of those counts, so a machine that says
`CI=1` cannot pass by skipping what it failed to set up.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

TRUTHY = {"1", "true", "yes"}


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in TRUTHY


def unavailable(reason: str, *, allow_module_level: bool = False) -> NoReturn:
    """Skip the test (or module) for `reason`; under CI, fail it instead."""
    if under_ci():
        pytest.fail(f"{reason} (CI: this must run, not skip)", pytrace=False)
    pytest.skip(reason, allow_module_level=allow_module_level)
