"""``python -m outlier_dask``: the ``outlier-dask`` command."""

import sys

from outlier_dask.cli import command

sys.exit(command())
