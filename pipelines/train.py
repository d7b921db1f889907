"""DVC stage `train`: a thin entry point over `vaeflow train` (see dvc.yaml)."""

import sys

from vaeflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
