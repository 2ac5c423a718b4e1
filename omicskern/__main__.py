import sys

from omicskern.cli import main

sys.exit(main())
