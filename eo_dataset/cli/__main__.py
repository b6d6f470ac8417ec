import sys

from eo_dataset.cli.main import main

raise SystemExit(main(sys.argv[1:]))
