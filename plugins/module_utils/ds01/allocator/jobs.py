"""dcgm-exporter's job mapping: which user's container holds each GPU, as the files it reads."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from typing import Any

from .. import fsutil, gpu

# --------------------------------------------------------------------------------------------
# dcgm-exporter job mapping
# --------------------------------------------------------------------------------------------


def job_id(container: Any) -> str:
    """``<user>/<container name>`` (``unknown/<name>`` when the owner is unknown)."""
    return f"{container.owner or 'unknown'}/{container.name}"


def job_mapping(inventory: gpu.Inventory, holdings: Iterable[Any]) -> dict:
    """GPU index (as text) → sorted job ids of the containers holding it or any of its MIG slots."""
    out: dict = {}
    for container in holdings:
        for slot_id in container.slots:
            try:
                index = str(inventory.slot(slot_id).gpu_index)
            except KeyError:
                continue
            jobs = out.setdefault(index, [])
            if job_id(container) not in jobs:
                jobs.append(job_id(container))
    return {k: sorted(v) for k, v in out.items()}


def sync_job_mapping(inventory: gpu.Inventory, holdings: Iterable[Any], mapping_dir: str) -> dict:
    """Rewrite dcgm-exporter's ``--hpc-job-mapping-dir`` from Docker state; return what it holds.

    dcgm-exporter's format (its ``transformation/hpc.go``): one regular file per GPU, named by the
    GPU's index (only names that parse as integers are read), holding job ids one per line; each
    metric of that GPU is repeated once per job with the label ``hpc_job``. MIG instances have no
    file of their own: their jobs go into their GPU's file. A GPU nobody holds has **no** file (an
    empty file would drop that GPU's metrics). Files are replaced atomically (temp file + rename,
    temp names are not integers, so a half-written file is never read); unchanged files are left.
    """
    wanted = job_mapping(inventory, holdings)
    os.makedirs(mapping_dir, mode=0o755, exist_ok=True)
    for index, jobs in wanted.items():
        path = os.path.join(mapping_dir, index)
        body = "".join(f"{j}\n" for j in jobs)
        try:
            with open(path, encoding="utf-8") as handle:
                if handle.read() == body:
                    continue
        except FileNotFoundError:
            pass
        fsutil.atomic_write(path, body)  # temp names start with '.', never an integer: never read half
    for name in os.listdir(mapping_dir):
        if name.isdigit() and name not in wanted:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(mapping_dir, name))
    return wanted
