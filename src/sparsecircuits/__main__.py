"""`python -m sparsecircuits ...`: the same command line as the `sparsecircuits` script."""

import sys

from sparsecircuits.cli import main

sys.exit(main())
