"""``python -m polymq.core`` is the ``polymq`` command."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
