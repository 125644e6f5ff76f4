"""cbm: robust, interpretable medical image classifiers with concept bottlenecks.

An image is scored against named clinical concepts by a vision-language model, and a sparse
linear head decides from those scores alone. See DESIGN.md for the flow of data.

``import cbm`` stays light: subpackages (and torch, open_clip, pydicom) load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
