"""``python -m omicskern.bench ...`` = ``omicskern bench ...``."""

import sys

from omicskern.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
