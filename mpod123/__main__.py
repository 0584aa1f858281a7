"""``python -m mpod123``: the command line, run by a given Python (the add-on's managed backend starts it so)."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
