"""Running the engine on a plan, as ``detect_outliers`` does, for tests of the engine alone."""

from __future__ import annotations

import contextlib

from outlier_dask.engine.handover import handover_kind, open_handover, uses_store
from outlier_dask.engine.run import EngineResult, run_plan
from outlier_dask.engine.stores import ScratchStore, scratch_directory
from outlier_dask.runtime.schedulers import start_runner


def run_engine(plan, params, work_dir=None, kind=None, **options) -> EngineResult:
    """Run ``plan`` with the handover ``kind`` (default: the one ``params`` choose).

    ``options`` go to :func:`~outlier_dask.engine.run.run_plan`. The ``workers`` kind also
    runs on local schedulers: group results are then persisted in this process, the graph a
    cluster runs.
    """
    kind = kind or handover_kind(params.scheduler, params.in_memory)
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(scratch_directory(str(work_dir) if work_dir else None))
        store = ScratchStore(str(scratch / "s.zarr")) if uses_store(kind) else None
        handover = stack.enter_context(open_handover(kind, plan, store))
        with start_runner(params) as runner:
            return run_plan(plan, params, runner, handover, **options)
