"""``python -m cbm``: the ``cbm`` command, for an environment whose scripts folder is not on PATH."""

import sys

from cbm.cli import main

if __name__ == "__main__":
    sys.exit(main())
