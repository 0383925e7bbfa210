"""Test-session set-up shared by every test module."""

import os

import dask
import pytest

# jwst (the reference in parity tests) asks a CRDS server for parameter files unless told not
# to; the tests must run offline.
os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "True")
os.environ.setdefault("CRDS_MODE", "local")


@pytest.fixture(scope="session", autouse=True)
def dask_folders_in_the_session(tmp_path_factory):
    """distributed's own folders (its lock files, the workers' spaces) in the session's tmp
    folder, not in the machine's ``/tmp/dask-scratch-space``: for the clusters tests start in
    this process (dask's configuration) and as ``dask scheduler``/``dask worker`` commands
    (the environment they inherit). The product sets its own for the clusters it starts."""
    folder = str(tmp_path_factory.mktemp("dask"))
    before = os.environ.get("DASK_TEMPORARY_DIRECTORY")
    os.environ["DASK_TEMPORARY_DIRECTORY"] = folder
    try:
        with dask.config.set({"temporary-directory": folder}):
            yield
    finally:
        if before is None:
            del os.environ["DASK_TEMPORARY_DIRECTORY"]
        else:
            os.environ["DASK_TEMPORARY_DIRECTORY"] = before
