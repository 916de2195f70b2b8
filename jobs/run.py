"""spark-submit entry point: `spark-submit jobs/run.py [GLOBAL OPTIONS] [ARGS]`."""

import sys

from beha2vec.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], stage="run"))
