"""DVC stage `classifier` (images): a thin entry point over `vaeflow classifier` (see dvc.yaml)."""

import sys

from vaeflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["classifier", *sys.argv[1:]]))
