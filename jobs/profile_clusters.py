"""spark-submit entry point: `spark-submit jobs/profile_clusters.py [GLOBAL OPTIONS] [ARGS]`.

Not ``profile.py``: spark-submit puts this folder first on ``sys.path``, where that name would
shadow the standard library's ``profile`` module, which PySpark imports."""

import sys

from beha2vec.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], stage="profile"))
