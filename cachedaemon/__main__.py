"""``python -m cachedaemon``: the same as the ``cachedaemon`` console script."""

from __future__ import annotations

import sys

from cachedaemon.cli import main

if __name__ == "__main__":
    sys.exit(main())
