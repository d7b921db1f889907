"""DVC stage `evaluate`: a thin entry point over `vaeflow evaluate` (see dvc.yaml)."""

import sys

from vaeflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
