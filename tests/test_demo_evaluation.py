"""The encoder evaluation: the pointing game against drawn masks, and the script's refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from cbm.demo.evaluation import POINTING_CONCEPTS, pointing_game

ROOT = Path(__file__).resolve().parents[1]


def _masks(size: int = 64) -> dict[str, np.ndarray]:
    from cbm.demo.render import MASK_NAMES

    masks = {name: np.zeros((size, size), bool) for name in MASK_NAMES}
    masks["dots"][40:44, 8:12] = True  # cell (5, 1) of an 8 x 8 grid
    masks["light brown"][24:40, 24:40] = True  # the middle: cells (3..4, 3..4)
    masks["ruler"][:, 56:] = True  # the last column of cells
    return masks


def test_pointing_game_counts_peaks_inside_the_mask_and_on_the_cue():
    names = ["dots", "tan pigment"]
    assert set(names) <= set(POINTING_CONCEPTS)
    maps = np.zeros((3, 2, 8, 8))
    maps[0, 0, 5, 1] = 1.0  # dots: a hit
    maps[0, 1, 4, 4] = 1.0  # tan: a hit
    maps[1, 0, 2, 7] = 1.0  # dots: on the ruler instead
    maps[1, 1, 0, 0] = 1.0  # tan: a miss, not on the ruler
    maps[2, 0, 0, 0] = 1.0  # dots absent in image 2: not counted
    truth = [{"dots": True, "tan pigment": True}, {"dots": True, "tan pigment": True}, {"dots": False, "tan pigment": True}]
    maps[2, 1, 3, 3] = 1.0
    out = pointing_game(maps, names, [_masks()] * 3, truth, ["ruler", "ruler", "none"])
    assert out["pointing"] == {"dots": 0.5, "tan pigment": round(2 / 3, 4)}
    assert out["pointing_n"] == {"dots": 2, "tan pigment": 3}
    assert abs(out["pointing_mean"] - (0.5 + 2 / 3) / 2) < 1e-3
    assert out["pointing_cue"] == 0.25 and out["pointing_cue_n"] == 4  # 1 of the 4 present concepts in ruler images
    assert out["map_grid"] == [8, 8]
    assert out["pointing_centre_baseline"] == 0.6  # the middle cell holds tan, never the dots
    # per concept, averaged as the maps' mean is: tan is easy from the middle (1.0), the dots never (0.0);
    # the dots' maps beat the middle cell by 50 points, tan's fall 33 short of it
    assert out["pointing_centre"] == {"dots": 0.0, "tan pigment": 1.0} and out["pointing_centre_mean"] == 0.5
    assert out["pointing_beats_centre"] == ["dots"]


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "eval_demo_clip.py"), *args],
                          capture_output=True, text=True, timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": ""})


def test_eval_script_refuses_a_missing_or_mismatched_assets_folder_in_one_line(tmp_path):
    from cbm.demo.encoder import CONFIG_PATH

    r = _script("--assets", str(tmp_path))
    assert r.returncode == 2 and "lacks demo-clip.json, demo-clip.safetensors" in r.stderr and "Traceback" not in r.stderr
    config = json.loads(CONFIG_PATH.read_text())
    config["vision_cfg"]["timm_model_name"] = "no_such_tower"
    (tmp_path / "demo-clip.json").write_text(json.dumps(config))
    (tmp_path / "demo-clip.safetensors").write_bytes(b"not safetensors")
    r = _script("--assets", str(tmp_path))
    assert r.returncode == 2 and "unknown or invalid architecture" in r.stderr and "no_such_tower" in r.stderr
    (tmp_path / "demo-clip.json").write_text(CONFIG_PATH.read_text())
    r = _script("--assets", str(tmp_path))
    assert r.returncode == 2 and "does not match demo-clip.json" in r.stderr and r.stderr.count("\n") == 1
