"""DVC stage `prepare`: a thin entry point over `vaeflow prepare` (see dvc.yaml)."""

import sys

from vaeflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
