"""Every Prometheus metric of the server, declared in one place.

Names follow ``taskpatch_<noun>_<unit>``; labels are bounded (rpc, code, method, state, reason). Task names are never
labels: the number of tasks is not capped. Each server instance owns its own registry, so several servers in one
process (tests, benchmarks) do not mix their numbers.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # RPC layer
        self.rpc_requests = Counter(
            "taskpatch_rpc_requests", "RPCs handled, by method and status code", ["rpc", "code"], registry=r
        )
        self.rpc_latency = Histogram(
            "taskpatch_rpc_latency_seconds", "RPC latency by method", ["rpc"], buckets=LATENCY_BUCKETS, registry=r
        )
        # Serving engine
        self.predict_examples = Counter(
            "taskpatch_predict_examples", "Examples predicted, by patch method", ["method"], registry=r
        )
        self.batch_size = Histogram(
            "taskpatch_batch_size_examples", "Examples per serving forward pass", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_tasks = Histogram(
            "taskpatch_batch_tasks", "Distinct tasks per serving forward pass", buckets=BATCH_BUCKETS, registry=r
        )
        self.forward_latency = Histogram(
            "taskpatch_forward_latency_seconds", "Serving forward pass time", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "taskpatch_queue_depth_requests", "Predict requests waiting for a forward pass", registry=r
        )
        self.patch_loads = Counter("taskpatch_patch_loads", "Patches loaded into the resident table", registry=r)
        self.patch_load_latency = Histogram(
            "taskpatch_patch_load_seconds", "Time to load a patch from the store", buckets=LATENCY_BUCKETS, registry=r
        )
        self.patch_evictions = Counter(
            "taskpatch_patch_evictions", "Patches evicted from the resident table", ["reason"], registry=r
        )
        self.patch_cache_hits = Counter("taskpatch_patch_cache_hits", "Lookups served by a resident patch", registry=r)
        self.patch_cache_misses = Counter("taskpatch_patch_cache_misses", "Lookups that needed a load", registry=r)
        self.resident_patches = Gauge("taskpatch_resident_patches", "Patches in the resident table", registry=r)
        self.resident_bytes = Gauge(
            "taskpatch_resident_bytes", "Bytes of patch tensors in the resident table", registry=r
        )
        self.resident_table_bytes = Gauge(
            "taskpatch_resident_table_bytes", "Bytes the resident tables hold on the device", registry=r
        )
        # Training
        self.training_jobs = Gauge("taskpatch_training_jobs", "Training jobs by current state", ["state"], registry=r)
        self.training_jobs_finished = Counter(
            "taskpatch_training_jobs_finished", "Training jobs that ended, by final state", ["state"], registry=r
        )
        self.training_examples_per_second = Gauge(
            "taskpatch_training_examples_per_second", "Throughput of the running training job", registry=r
        )
        self.training_loss = Gauge("taskpatch_training_loss", "Recent training loss of the running job", registry=r)
        self.training_examples = Counter(
            "taskpatch_training_examples", "Training examples processed", ["method"], registry=r
        )
        # Store
        self.tasks_stored = Gauge("taskpatch_tasks_stored", "Tasks in the patch store", registry=r)
        self.tasks_unhealthy = Gauge("taskpatch_tasks_unhealthy", "Stored tasks that cannot be served", registry=r)
        self.store_bytes = Gauge("taskpatch_store_bytes", "Bytes of patch files in the store", registry=r)
        # Backbone
        self.backbone_info = Info("taskpatch_backbone", "The backbone this server runs", registry=r)
        self.backbone_parameters = Gauge(
            "taskpatch_backbone_parameters", "Parameters of the frozen backbone", registry=r
        )
