"""``python -m lazyio``: the command line (the demo by default)."""

import sys

from lazyio.cli import main

sys.exit(main())
