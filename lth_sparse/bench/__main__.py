"""`python -m lth_sparse.bench ...`: the same flags as `lth-sparse bench`."""
import sys

from lth_sparse.bench.cli import main

sys.exit(main())
