"""``python -m outlier_dask``: the ``outlier-dask`` command."""

import sys

from outlier_dask.command import command

sys.exit(command())
