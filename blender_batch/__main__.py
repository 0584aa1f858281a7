"""``python -m blender_batch PHOTOS --out ASSETS``: the batch command on its own."""

import sys

from .commands import main

sys.exit(main())
