"""Cluster mode: pipelines as Ray actors, ingest/accounting/store/alarms stay in the daemon.

``[cluster] engine = "ray"`` swaps each :class:`monitor.router.PipelineWorker` for a
:class:`monitor.cluster.worker.RayPipelineWorker` that keeps the same queue, overload policy and
result path but runs ``process`` on Ray actors (see docs/scale-out.md). Ray is imported only
here and only when the engine is ``ray``.
"""

KEYED_KINDS = frozenset({"alignment", "early_warning"})
"""Pipelines that keep per-(stream, series) state: one series stays on one replica, in order."""
