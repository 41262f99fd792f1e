"""`python -m xferlab` (what torchrun launches) is the `xferlab` command."""

import sys

from xferlab.cli import main

sys.exit(main())
