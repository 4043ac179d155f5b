"""``python -m pipeline.cli``: the ``ssmspine`` command."""

import sys

from pipeline.cli import main

sys.exit(main())
