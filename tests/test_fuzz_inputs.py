"""The fuzz suite: seeded, bounded mutations of images (PNG, JPEG, DICOM), data cards, manifests and
``cbm validate`` through scripts/fuzz_inputs.py, each input in a worker under an address-space and a
time limit. The contract: every accepted input gives a valid result, everything else a documented
error (an InputError, or FileNotFoundError) naming the file on one line; nothing hangs, crashes or
peaks over twice the pixel budget's bytes, measured at a small budget with images at that budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 1 << 20  # pixels: 12 MB of float32 RGB, so a memory blow-up shows at once


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("fuzz") / "fuzz.json"
    args = [sys.executable, str(ROOT / "scripts" / "fuzz_inputs.py"), "--seed", "0", "--images", "120", "--cards", "30",
            "--manifests", "30", "--validate", "15", "--timeout", "10", "--max-pixels", str(BUDGET), "--json", str(out)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.is_file(), done.stderr[-2000:]
    return {"rc": done.returncode, **json.loads(out.read_text())}


def test_no_input_breaks_the_contract(campaign):
    assert campaign["bad"] == 0, json.dumps(campaign["examples"], indent=1)
    assert campaign["rc"] == 0


@pytest.mark.parametrize("kind", ["image", "card", "manifest", "validate"])
def test_each_kind_is_both_accepted_and_refused(campaign, kind):
    """Not a vacuous pass: the mutations reach both sides of every reader."""
    counts = campaign["counts"][kind]
    assert counts.get("accepted", 0) > 0 and counts.get("clear_error", 0) > 0, counts


def test_peak_memory_of_any_input_is_under_twice_the_budget(campaign):
    if not campaign["peak_measured"]:
        pytest.skip("this system cannot reset a process's peak resident size (/proc/self/clear_refs)")
    assert campaign["pixel_budget"] == BUDGET and campaign["budget_bytes"] == 12 * BUDGET
    assert 0 < campaign["peak_mb_any_input"] * 2**20 <= 2 * campaign["budget_bytes"], campaign["peak_input"]
