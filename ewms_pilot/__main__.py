"""`python -m ewms_pilot`: run the pilot (same as the `ewms-pilot` console script)."""

import sys

from .cli.main import main

sys.exit(main())
