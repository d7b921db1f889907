"""DVC stage `sample`: a thin entry point over `vaeflow sample` (see dvc.yaml)."""

import sys

from vaeflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["sample", *sys.argv[1:]]))
