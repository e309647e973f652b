#!/usr/bin/python
# Copyright (c) ds01.infra contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_facts
short_description: GPU and MIG topology of a ds01 host as facts
version_added: 0.1.0
description:
  - Reads the host's GPUs and their MIG instances through the ds01 GPU inventory (the same code the allocator
    uses). It uses NVML by default, or the fake backend when O(topology) names a topology file.
  - Returns C(ansible_facts.ds01_gpus), one entry per GPU with its slot id (C(<index>) for a whole GPU,
    C(<index>.<mig device index>) for a MIG instance) and its weight in GPU-equivalents (a full GPU is 1.0,
    a MIG instance its compute slices / 7).
author:
  - ds01.infra maintainers (@ds01-infra)
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.facts
attributes:
  check_mode:
    support: full
    details:
      - This module does not modify state.
  diff_mode:
    support: none
  facts:
    support: full
  idempotent:
    description:
      - When run twice in a row outside check mode, with the same arguments, the second run reports no change.
    support: full
    details:
      - This module does not modify state.
  platform:
    platforms: posix
options:
  topology:
    description:
      - A topology YAML file (C(gpus:) list, see the project's architecture notes). Given, the fake backend
        reads it instead of NVML (hosts and CI without GPUs).
    type: path
requirements:
  - nvidia-ml-py (pynvml) for the NVML backend
  - PyYAML for the fake backend
"""

EXAMPLES = r"""
- name: Read the GPU topology
  ds01.infra.gpu_facts:

- name: Every host has at least one GPU slot
  ansible.builtin.assert:
    that: ansible_facts.ds01_gpus | map(attribute='slots') | flatten | length > 0

- name: The fake topology of a CI run
  ds01.infra.gpu_facts:
    topology: /etc/ds01/gpu-topology.yaml
"""

RETURN = r"""
ansible_facts:
  description: Facts added to the host.
  returned: always
  type: dict
  contains:
    ds01_gpus:
      description: One entry per GPU, by index.
      returned: always
      type: list
      elements: dict
      sample:
        - index: 0
          uuid: GPU-0000
          name: NVIDIA A100-SXM4-40GB
          memory_mib: 40960
          mig: false
          slots: ["0"]
          gpueq: 1.0
          instances: []
        - index: 1
          uuid: GPU-1111
          name: NVIDIA A100-SXM4-40GB
          memory_mib: 40960
          mig: true
          slots: ["1.0", "1.1"]
          gpueq: 0.7143
          instances:
            - {slot: "1.0", uuid: MIG-aaaa, profile: 3g.20gb, gpueq: 0.4286}
            - {slot: "1.1", uuid: MIG-bbbb, profile: 2g.10gb, gpueq: 0.2857}
    ds01_gpu_backend:
      description: Which backend answered.
      returned: always
      type: str
      sample: nvml
"""

import re

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native

try:
    from ansible_collections.ds01.infra.plugins.module_utils.ds01 import gpu

    GPU_IMPORT_ERROR = None
except ImportError as exc:  # the inventory is written alongside this module
    gpu = None
    GPU_IMPORT_ERROR = exc

_PROFILE_SLICES_RE = re.compile(r"^(\d+)g\.")
MIG_SLICES = 7


def _get(item, *names, default=None):
    for name in names:
        value = item.get(name) if isinstance(item, dict) else getattr(item, name, None)
        if callable(value):
            value = value()
        if value is not None:
            return value
    return default


def profile_gpueq(profile):
    """``3g.20gb`` → 3/7 (compute slices over the seven of a full GPU); unknown → None."""
    match = _PROFILE_SLICES_RE.match(profile or "")
    return round(int(match.group(1)) / MIG_SLICES, 4) if match else None


def gpu_fact(item):
    """One GPU of the inventory as a plain fact (whatever record type the inventory uses)."""
    index = int(_get(item, "index"))
    instances = []
    for position, inst in enumerate(_get(item, "instances", "mig_instances", default=[]) or []):
        profile = _get(inst, "profile", default="")
        gpueq = _get(inst, "gpueq")
        instances.append(
            {
                "slot": str(_get(inst, "slot", "slot_id", default=f"{index}.{_get(inst, 'index', default=position)}")),
                "uuid": _get(inst, "uuid", default=""),
                "profile": profile,
                "gpueq": round(float(gpueq), 4) if gpueq is not None else profile_gpueq(profile),
            }
        )
    mig = bool(_get(item, "mig", "mig_enabled", default=False))
    if mig:
        slots = [i["slot"] for i in instances]
        gpueq = round(sum(i["gpueq"] or 0.0 for i in instances), 4)
    else:
        slots = [str(_get(item, "slot", "slot_id", default=index))]
        gpueq = 1.0
    return {
        "index": index,
        "uuid": _get(item, "uuid", default=""),
        "name": _get(item, "name", default=""),
        "memory_mib": _get(item, "memory_mib"),
        "mig": mig,
        "slots": slots,
        "gpueq": gpueq,
        "instances": instances,
    }


def _factory(*names):
    """The first of ``names`` that gpu.py defines (its constructor names are settling concurrently)."""
    for name in names:
        factory = getattr(gpu, name, None)
        if callable(factory):
            return factory
    return None


def read_inventory(topology):
    """(backend name, GPU records) from gpu.py: the fake backend for a topology file, else NVML."""
    if topology:
        factory = _factory("fake_inventory", "FakeBackend", "load_topology")
        backend = factory(topology) if callable(factory) else None
        name = "fake"
    else:
        factory = _factory("nvml_inventory", "NvmlBackend")
        backend = factory() if callable(factory) else None
        name = "nvml"
    if backend is None:
        raise RuntimeError(f"ds01's gpu.py offers no {name} backend")
    gpus = backend if isinstance(backend, (list, tuple)) else _get(backend, "gpus", "list_gpus", default=[])
    return name, sorted(gpus, key=lambda g: int(_get(g, "index")))


def main():
    module = AnsibleModule(argument_spec={"topology": {"type": "path"}}, supports_check_mode=True)
    if gpu is None:
        module.fail_json(
            msg=f"the ds01 GPU inventory (module_utils/ds01/gpu.py) cannot be imported: {GPU_IMPORT_ERROR}"
        )
    try:
        backend, gpus = read_inventory(module.params["topology"])
        facts = [gpu_fact(g) for g in gpus]
    except Exception as exc:  # noqa: BLE001 - the NVML/topology edge: report what failed, as the module's error
        module.fail_json(msg=f"cannot read the GPU inventory: {to_native(exc)}", exception_type=type(exc).__name__)
    module.exit_json(changed=False, ansible_facts={"ds01_gpus": facts, "ds01_gpu_backend": backend})


if __name__ == "__main__":
    main()
