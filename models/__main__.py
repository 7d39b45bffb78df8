"""`python -m models` was the importer's CLI; it moved to `python -m registry`."""

import sys

sys.exit(
    "`python -m models import|resolve` moved: use `python -m registry import|resolve` "
    "(same arguments)"
)
