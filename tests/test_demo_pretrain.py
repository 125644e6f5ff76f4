"""Pretraining demo-clip: an interrupted run keeps its state and resumes; bad settings end in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "pretrain_demo_clip.py"
TINY = ["--corpus", "300", "--batch", "16", "--select-every", "10", "--select-n", "40", "--log-every", "5",
        "--threads", "1", "--workers", "1", "--cpu"]


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "CBM_CACHE_DIR": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    out = tmp_path / "run"
    # enough steps that the run cannot end before the signal arrives, on a fast machine too, and few
    # enough that the resumed run ends well within its timeout on a slow one (about 1.8 s a step on
    # one thread of a 2-core AMD EPYC machine: 200 steps took longer than the 300 s allowed)
    args = [sys.executable, str(SCRIPT), *TINY, "--steps", "60", "--out", str(out)]
    # a job started in the background of a non-interactive shell (as CI may be) inherits SIGINT ignored;
    # the child must see Ctrl-C as a person's terminal would send it
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(tmp_path),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:  # interrupt once a selection (and so a checkpoint) has happened
        if line.startswith('{"step": 15'):
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "interrupted at step" in err and "--resume" in err
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert 10 <= state["step"] < 60 and (out / "checkpoint" / "best.safetensors").is_file()
    assert not (out / "demo-clip.safetensors").exists()
    done = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300, env=_env(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resumed at step {state['step']}" in done.stderr
    record = json.loads((out / "demo-clip.training.json").read_text())
    assert record["steps"] == 60 and record["resumed"] is True
    assert [h["step"] for h in record["selection"]["history"]] == list(range(10, 61, 10))


def test_bad_settings_end_in_one_line(tmp_path):
    env = _env(tmp_path)
    run = lambda *a: subprocess.run([sys.executable, str(SCRIPT), *TINY, "--steps", "2", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=300, env=env)
    r = run("--out", str(tmp_path / "a"), "--resume")
    assert r.returncode != 0 and "no checkpoint to resume" in r.stderr and "Traceback" not in r.stderr
    r = run("--out", str(tmp_path / "b"), "--timm-model", "no_such_tower")
    assert r.returncode != 0 and "unknown image tower 'no_such_tower'" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "init").mkdir()
    r = run("--out", str(tmp_path / "c"), "--init", str(tmp_path / "init"))
    assert r.returncode != 0 and "has no demo-clip.safetensors" in r.stderr and "Traceback" not in r.stderr
