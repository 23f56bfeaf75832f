"""`python -m ewms_pilot`: run the pilot (same as the `ewms-pilot` console script).

Importing this module runs nothing (tools that import every module, like
1.x's test suites and doc builders, must not start a pilot).
"""

import sys

if __name__ == "__main__":
    from .cli.main import main

    sys.exit(main())
