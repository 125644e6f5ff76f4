"""cbm: robust, interpretable medical image classifiers with concept bottlenecks.

An image is scored against named clinical concepts by a vision-language model, and a sparse
linear head decides from those scores alone. The README shows the commands and the API.

    from cbm import ConceptBottleneckModel
    model = ConceptBottleneckModel.fit("ham10000", encoder="biomedclip")

``import cbm`` stays light: subpackages (and torch, open_clip, pydicom) load on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "ConceptBottleneckModel", "CaseExplanation"]


def __getattr__(name: str) -> Any:
    """The model classes, imported on first use (they pull in torch)."""
    if name in ("ConceptBottleneckModel", "CaseExplanation"):
        from cbm import model

        return getattr(model, name)
    raise AttributeError(f"module 'cbm' has no attribute {name!r}")
