"""Test-session set-up shared by every test module."""

import os

# jwst (the reference in parity tests) asks a CRDS server for parameter files unless told not
# to; the tests must run offline.
os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "True")
os.environ.setdefault("CRDS_MODE", "local")
