"""The one door to Docker: every module of ds01 that reads or changes Docker goes through here.

- ``records``: ``ContainerInfo``, the one record of a container (allocator, detector, lifecycle,
  observe and the exporter, the gateway's questions), built from list summaries, inspect documents or cached
  create-time facts; ``parse_time``, the one parser of Docker's timestamps; the GPU labels.
- ``reach``: ``gpu_reach``, the one answer to "does this request or container reach a GPU"
  (the gateway asks it of a create body, the detector and the allocator of a stored container).
- ``read``: ``list_containers`` (one list call, inspects only of containers never seen) and the
  ``InspectCache`` of create-time facts, kept in memory or in ``<run_dir>/docker-facts.json``.
- ``engine``: a standard-library reader of the engine's Unix socket (list and inspect), so a
  one-shot command does not pay the SDK's import.
- ``sdk``: the Docker SDK, the only module that imports it; its client and exception types.

The SDK's names (``client_from_env``, ``DockerException``, ``APIError``, ``NotFound``,
``ImageNotFound``, ``RequestException``, ``DOCKER_ERRORS``, ``HAS_DOCKER``, ``sdk_device_request``)
are reachable from this package but loaded on first use, so importing it stays cheap.
"""

from __future__ import annotations

from typing import Any

from .engine import Engine, EngineError, EngineNotFound, engine_from_env
from .reach import (
    CDI_GPU_PREFIX,
    NO_GPU_VALUES,
    NVIDIA_CAPABILITIES,
    NVIDIA_ENV,
    NVIDIA_VOLUME_DIR,
    GpuReach,
    cdi_gpu,
    container_gpu_reach,
    device_request_reaches_gpu,
    env_value,
    gpu_reach,
    is_cdi_name,
)
from .read import (
    DECISION_TIMEOUT_S,
    FACTS_FILE,
    InspectCache,
    facts_cache_path,
    list_containers,
    reader_from_env,
    skip_unreadable,
)
from .records import (
    GPU_FROM_DEVICE_REQUESTS,
    GPU_FROM_ENV,
    GPU_FROM_INVENTORY,
    GPU_FROM_LABEL,
    GPU_NONE,
    GPUEQ_LABEL,
    LEGACY_UUID_LABEL,
    SLOTS_LABEL,
    TYPE_LABEL,
    UUIDS_LABEL,
    VISIBLE_DEVICES_ENV,
    WORKSPACE_MOUNT,
    ContainerInfo,
    DockerStateError,
    GpuClaim,
    attach_slots,
    container_info,
    containers_of,
    create_facts,
    gpu_claim,
    holders_by_slot,
    parse_time,
    split_ids,
)

_SDK_NAMES = {
    "client_from_env": "client_from_env",
    "DockerException": "DockerException",
    "APIError": "APIError",
    "NotFound": "NotFound",
    "ImageNotFound": "ImageNotFound",
    "RequestException": "RequestException",
    "DOCKER_ERRORS": "DOCKER_ERRORS",
    "HAS_DOCKER": "HAS_DOCKER",
    "sdk_device_request": "device_request",
}


def __getattr__(name: str) -> Any:
    """The SDK's names, imported on first use (``from .docker import NotFound`` works too)."""
    if name in _SDK_NAMES:
        from . import sdk  # the SDK costs ~150 ms to import: one-shot readers never load it

        return getattr(sdk, _SDK_NAMES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CDI_GPU_PREFIX",
    "DECISION_TIMEOUT_S",
    "FACTS_FILE",
    "GPUEQ_LABEL",
    "GPU_FROM_DEVICE_REQUESTS",
    "GPU_FROM_ENV",
    "GPU_FROM_INVENTORY",
    "GPU_FROM_LABEL",
    "GPU_NONE",
    "LEGACY_UUID_LABEL",
    "NO_GPU_VALUES",
    "NVIDIA_CAPABILITIES",
    "NVIDIA_ENV",
    "NVIDIA_VOLUME_DIR",
    "SLOTS_LABEL",
    "TYPE_LABEL",
    "UUIDS_LABEL",
    "VISIBLE_DEVICES_ENV",
    "WORKSPACE_MOUNT",
    "ContainerInfo",
    "DockerStateError",
    "Engine",
    "EngineError",
    "EngineNotFound",
    "GpuClaim",
    "GpuReach",
    "InspectCache",
    "attach_slots",
    "cdi_gpu",
    "container_gpu_reach",
    "container_info",
    "containers_of",
    "create_facts",
    "device_request_reaches_gpu",
    "engine_from_env",
    "env_value",
    "facts_cache_path",
    "gpu_claim",
    "gpu_reach",
    "holders_by_slot",
    "is_cdi_name",
    "list_containers",
    "parse_time",
    "reader_from_env",
    "skip_unreadable",
    "split_ids",
]
