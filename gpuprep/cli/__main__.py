"""Allow ``python -m gpuprep.cli``."""

import sys

from .main import main

sys.exit(main())
