import sys

from eo_models.cli.main import main

raise SystemExit(main(sys.argv[1:]))
