"""``cbm explain`` and ``cbm serve`` from the command line, on a saved model folder."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from explain_support import assert_no_phi, make_image, write_phi_dicom
from PIL import Image

from cbm.cli import main
from cbm.explain import explain_image


@pytest.fixture(scope="module")
def model_dir(tiny_model, tmp_path_factory):
    """The tiny model saved; its encoder name (``CONFIG.json@random``) recreates the same weights in any process."""
    return tiny_model.save(tmp_path_factory.mktemp("saved") / "model")


@pytest.fixture()
def inputs(tmp_path):
    png = tmp_path / "lesion.png"
    Image.fromarray((make_image(61, (90, 110)) * 255).astype(np.uint8)).save(png)
    dcm = tmp_path / "ct.dcm"
    write_phi_dicom(dcm, seed=3)
    return png, dcm


def test_cbm_explain_writes_reports_from_the_saved_model(model_dir, tiny_model, inputs, tmp_path, capsys):
    png, dcm = inputs
    out = tmp_path / "reports"
    assert main(["explain", str(model_dir), str(png), str(dcm), "--out", str(out), "--top-k", "2"]) == 0
    printed = capsys.readouterr().out
    assert "2 report(s)" in printed and str(out / "index.html") in printed
    summary = json.loads((out / "index.json").read_text())
    # a fresh process-level load of the folder predicts what the in-memory model predicts
    expected = explain_image(tiny_model, png).explanation
    assert summary["cases"][0]["predicted"] == expected.predicted
    assert summary["cases"][0]["probabilities"] == pytest.approx(expected.probabilities, abs=1e-5)
    assert len(summary["cases"][0]["logit_terms"]) == 2 and len(summary["cases"][0]["findings"]) == 2
    ct = summary["cases"][1]  # a CT slice for a dermoscopy model: withheld, and why
    assert ct["withheld"] is True and {"modality", "greyscale"} <= {f["code"] for f in ct["flags"]}
    assert (out / "classes.html").is_file() and (out / "cases" / "ct.html").is_file()
    assert_no_phi((out / "cases" / "ct.html").read_text())


def test_cbm_explain_reports_bad_inputs(model_dir, inputs, tmp_path, capsys):
    png, _ = inputs
    broken = tmp_path / "broken.png"
    broken.write_bytes(png.read_bytes()[:60])
    assert main(["explain", str(model_dir), str(png), str(broken), "--out", str(tmp_path / "o")]) == 1
    assert "not explained: broken.png" in capsys.readouterr().out
    assert main(["explain", str(model_dir), str(tmp_path / "missing.png"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["explain", str(tmp_path), str(png), "--out", str(tmp_path / "o")]) == 2
    assert "model.json" in capsys.readouterr().err


def test_cbm_serve_answers_uploads_and_stops_on_ctrl_c(model_dir, tiny_model, inputs):
    png, _ = inputs
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    # a child inherits an ignored SIGINT (as some test runners and background shells leave it), and
    # Python then installs no KeyboardInterrupt handler: give the server the default disposition
    proc = subprocess.Popen([sys.executable, "-m", "cbm.cli", "serve", str(model_dir), "--port", "0"],
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    drain = None
    try:
        url, lines, deadline = None, [], time.monotonic() + 120
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
            found = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
            url = found.group(1) if found else None
        assert url, "server did not start:\n" + "".join(lines)
        # keep draining stderr: a server blocked on a full pipe would never see the Ctrl-C
        drain = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
        drain.start()
        with urllib.request.urlopen(url + "health", timeout=30) as resp:
            assert json.load(resp) == {"status": "ok"}
        req = urllib.request.Request(url + "explain", data=png.read_bytes(), headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            page = resp.read().decode()
        predicted = re.search(r'data-predicted="([^"]+)"', page).group(1)
        assert predicted == explain_image(tiny_model, png, maps=False).predicted
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, "".join(lines)
        drain.join(timeout=10)
        assert "stopped" in "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if drain is None:
            proc.stderr.close()
        else:
            drain.join(timeout=10)


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--port", "70000", "must be a port number from 0 to 65535"),
    ("--port", "-1", "must be a port number from 0 to 65535"),
    ("--max-upload-mb", "inf", "must be a size in MB, above 0 and finite"),
    ("--max-upload-mb", "nan", "must be a size in MB, above 0 and finite"),
    ("--max-upload-mb", "0", "must be a size in MB, above 0 and finite"),
])
def test_cbm_serve_refuses_bad_numbers_before_loading_the_model(tmp_path, capsys, flag, value, says):
    with pytest.raises(SystemExit) as info:  # argparse's own usage error (exit 2), naming the flag
        main(["serve", str(tmp_path / "no-model"), flag, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and says in err and "model.json" not in err
