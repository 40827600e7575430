"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# --- Local models (trainer.local_models) -------------------------------------------------------------------
@pytest.fixture(scope="session")
def local_models() -> Path:
    """The directory `rewardline models build` makes (reward, policy, tokenizer, data, build.json).

    Built once into <repo>/.cache/models (about two minutes on a 2-core machine) and rebuilt only when the
    builder's code or config changes; later sessions reuse it.
    """
    from trainer.local_models.build import ensure_models

    return ensure_models(REPO / ".cache" / "models")
