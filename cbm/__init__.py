"""cbm: robust, interpretable medical image classifiers with concept bottlenecks.

An image is scored against named clinical concepts by a vision-language model, and a sparse
linear head decides from those scores alone. The README shows the commands and the API.

    import cbm
    model = cbm.fit("ham10000", encoder="biomedclip")      # a cbm.ConceptBottleneckModel
    model.predict(["case1.png"]); model.save("runs/ham")

``import cbm`` stays light: subpackages (and torch, open_clip, pydicom) load on first use.
"""

from __future__ import annotations

from typing import Any

from cbm._version import __version__
__all__ = ["__version__", "fit", "ConceptBottleneckModel", "Prediction"]
_SUBPACKAGES = ("concepts", "data", "demo", "encoders", "explain", "heads", "pipeline", "calibration", "evaluate",
                "image_checks", "reference")


def __getattr__(name: str) -> Any:
    """The public API, imported on first use (it pulls in torch)."""
    if name in ("ConceptBottleneckModel", "Prediction"):
        from cbm import model

        return getattr(model, name)
    if name == "fit":
        from cbm.pipeline import fit

        return fit
    if name in _SUBPACKAGES:  # cbm.pipeline.run_experiment after a bare `import cbm`, as the README writes it
        import importlib

        return importlib.import_module(f"cbm.{name}")
    raise AttributeError(f"module 'cbm' has no attribute {name!r}")
