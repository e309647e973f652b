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
  - ds01.infra.module_attributes
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

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native

try:
    from ansible_collections.ds01.infra.plugins.module_utils.ds01 import gpu

    GPU_IMPORT_ERROR = None
except ImportError as exc:  # e.g. PyYAML missing from the target's Python
    gpu = None
    GPU_IMPORT_ERROR = exc


def gpu_fact(record, slots):
    """One ``gpu.Gpu`` and its allocatable ``gpu.Slot`` records as a plain fact."""
    instances = [
        {"slot": slot.slot_id, "uuid": slot.uuid, "profile": slot.profile, "gpueq": round(slot.gpueq, 4)}
        for slot in slots
        if slot.kind == gpu.KIND_MIG
    ]
    return {
        "index": record.index,
        "uuid": record.uuid,
        "name": record.name,
        "memory_mib": record.memory_mib,
        "mig": record.mig_enabled,
        "slots": [slot.slot_id for slot in slots],
        "gpueq": round(sum(slot.gpueq for slot in slots), 4),
        "instances": instances,
    }


def read_facts(topology):
    """(backend name, facts) through the inventory the allocator uses: fake for a topology, else NVML."""
    inventory = gpu.read_inventory(topology or None)
    by_gpu = {}
    for slot in inventory.slots():
        by_gpu.setdefault(slot.gpu_index, []).append(slot)
    facts = [gpu_fact(record, by_gpu.get(record.index, [])) for record in inventory.gpus]
    return ("fake" if topology else "nvml"), facts


def main():
    module = AnsibleModule(argument_spec={"topology": {"type": "path"}}, supports_check_mode=True)
    if gpu is None:
        module.fail_json(
            msg=f"the ds01 GPU inventory (module_utils/ds01/gpu.py) cannot be imported: {GPU_IMPORT_ERROR}"
        )
    try:
        backend, facts = read_facts(module.params["topology"])
    except gpu.GpuInventoryError as exc:  # a sentence: NVML missing, topology unreadable, ...
        module.fail_json(msg=f"cannot read the GPU inventory: {to_native(exc)}")
    module.exit_json(changed=False, ansible_facts={"ds01_gpus": facts, "ds01_gpu_backend": backend})


if __name__ == "__main__":
    main()
