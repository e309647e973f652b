#!/usr/bin/python
# Copyright (c) ds01.infra contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: slurm_gres
short_description: Slurm's GPU resources (gres.conf lines, TRES, billing weights) from the ds01 GPU inventory
version_added: 0.1.0
description:
  - Reads the host's GPUs and MIG instances through the ds01 GPU inventory (the code behind
    M(ds01.infra.gpu_facts) and the allocator), NVML by default or the fake backend when O(topology) names a file.
  - "Returns C(ansible_facts.ds01_slurm_gres): one gres.conf line per whole GPU (C(Type=) its model, C(File=) its
    device) and per MIG instance (C(Type=) its profile, C(MultipleFiles=) the parent GPU and its GPU- and
    compute-instance capability devices), the node's C(Gres=) value, the partition's C(TRESBillingWeights) (a whole
    GPU 7, a MIG instance its compute slices: ds01's GPU-equivalents in sevenths) and C(AccountingStorageTRES)."
  - "MIG capability minors come from O(mig_minors) when it exists (the driver's own numbering), else from the
    driver's fixed layout. A fake topology without C(gpu_instance_id) uses the instance's position instead."
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
      - A topology YAML file; given, the fake backend reads it instead of NVML.
    type: path
  config:
    description:
      - The ds01 C(resource-limits.yaml); without O(topology), its C(gpu_allocation) section chooses the backend
        (the allocator's choice). With neither, NVML answers.
    type: path
  mig_minors:
    description:
      - The driver's table of MIG capability device minors.
    type: path
    default: /proc/driver/nvidia-caps/mig-minors
requirements:
  - nvidia-ml-py (pynvml) for the NVML backend
  - PyYAML for the fake backend
"""

EXAMPLES = r"""
- name: Read the GPU resources for gres.conf
  ds01.infra.slurm_gres:
    topology: /etc/ds01/gpu-topology.yaml

- name: Render gres.conf
  ansible.builtin.copy:
    dest: /etc/slurm/gres.conf
    content: "{{ ansible_facts.ds01_slurm_gres.lines | join('\n') }}\n"
    mode: "0644"
"""

RETURN = r"""
ansible_facts:
  description: Facts added to the host.
  returned: always
  type: dict
  contains:
    ds01_slurm_gres:
      description: Slurm's view of the GPUs.
      returned: always
      type: dict
      sample:
        lines:
          - Name=gpu Type=a100-sxm4-40gb File=/dev/nvidia1
          - Name=gpu Type=3g.20gb MultipleFiles=/dev/nvidia0,/dev/nvidia-caps/nvidia-cap3,/dev/nvidia-caps/nvidia-cap4
        entries:
          - {slot: "0", type: a100-sxm4-40gb, files: [/dev/nvidia0], weight: 7, uuid: GPU-0000}
        node_gres: gpu:a100-sxm4-40gb:1,gpu:3g.20gb:1
        billing_weights: GRES/gpu:a100-sxm4-40gb=7,GRES/gpu:3g.20gb=3
        accounting_tres: gres/gpu,gres/gpu:a100-sxm4-40gb,gres/gpu:3g.20gb
        types: {a100-sxm4-40gb: 7, 3g.20gb: 3}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.text.converters import to_native

try:
    from ansible_collections.ds01.infra.plugins.module_utils.ds01 import config as ds01_config
    from ansible_collections.ds01.infra.plugins.module_utils.ds01 import gpu, slurm

    IMPORT_ERROR = None
except ImportError as exc:  # e.g. PyYAML missing from the target's Python
    ds01_config = gpu = slurm = None
    IMPORT_ERROR = exc


def read_minors(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return slurm.read_mig_minors(handle.read())
    except FileNotFoundError:
        return {}


def facts_of(entries):
    return {
        "lines": [entry.line() for entry in entries],
        "entries": [
            {"slot": e.slot, "type": e.gres_type, "files": list(e.files), "weight": e.weight, "uuid": e.uuid}
            for e in entries
        ],
        "node_gres": slurm.node_gres(entries),
        "billing_weights": slurm.billing_weights(entries),
        "accounting_tres": slurm.accounting_tres(entries),
        "types": slurm.gres_types(entries),
    }


def main():
    module = AnsibleModule(
        argument_spec={
            "topology": {"type": "path"},
            "config": {"type": "path"},
            "mig_minors": {"type": "path", "default": "/proc/driver/nvidia-caps/mig-minors"},
        },
        supports_check_mode=True,
    )
    if IMPORT_ERROR is not None:
        module.fail_json(msg=f"the ds01 GPU inventory cannot be imported: {IMPORT_ERROR}")
    try:
        if module.params["topology"] or not module.params["config"]:
            inventory = gpu.read_inventory(module.params["topology"] or None)
        else:
            inventory = gpu.inventory_from_config(ds01_config.load_config(module.params["config"]))
        entries = slurm.gres_entries(inventory.slots(), read_minors(module.params["mig_minors"]))
        facts = facts_of(entries)
    except ds01_config.ConfigError as exc:
        module.fail_json(msg=exc.render(), problems=[p.as_dict() for p in exc.problems])
    except gpu.GpuInventoryError as exc:
        module.fail_json(msg=f"cannot read the GPU inventory: {to_native(exc)}")
    except slurm.SlurmPlanError as exc:
        module.fail_json(msg=to_native(exc))
    except OSError as exc:
        module.fail_json(msg=f"cannot read {module.params['mig_minors']}: {to_native(exc)}")
    module.exit_json(changed=False, ansible_facts={"ds01_slurm_gres": facts})


if __name__ == "__main__":
    main()
