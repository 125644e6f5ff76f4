"""Test-wide settings: offline, CPU, a private cache folder per session."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Two cores, shared by test processes and DataLoader workers: one intra-op thread per process is
# many times faster than oversubscribed threads for the small models the tests use.
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Keep every cache the tests write out of the user's ~/.cache/cbm."""
    if "CBM_CACHE_DIR" not in os.environ:
        os.environ["CBM_CACHE_DIR"] = str(tmp_path_factory.mktemp("cbm-cache"))
    yield


@pytest.fixture(autouse=True)
def _cbm_loggers_stay_on():
    """Re-enable cbm's loggers after each test: a library that calls logging.config (import-linter's
    lint_imports in test_architecture does) disables every logger that exists, and later caplog
    checks would see nothing."""
    yield
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("cbm") and isinstance(logger, logging.Logger):
            logger.disabled = False


@pytest.fixture
def no_card_env(monkeypatch):
    """Built-in cards behave the same on a machine that has some datasets downloaded (no CBM_*_ROOT, no CBM_CARDS_PATH)."""
    for key in list(os.environ):
        if key.startswith("CBM_") and key.endswith("_ROOT"):
            monkeypatch.delenv(key)
    monkeypatch.delenv("CBM_CARDS_PATH", raising=False)


# Fixtures of the tests/test_explain* and tests/test_reference.py files (defined in tests/explain_support.py).
import explain_support  # noqa: E402

vit_encoder = pytest.fixture(scope="module")(explain_support.vit_encoder)
tiny_model = pytest.fixture(scope="module")(explain_support.tiny_model)
demo_model = pytest.fixture(scope="session")(explain_support.demo_model)
browser = pytest.fixture(scope="module")(explain_support.browser)
