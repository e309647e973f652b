"""The ``gateway`` section of resource-limits.yaml.

Its keys, checks and defaults are declared as data in the config package (``config/features.py``,
``GATEWAY_KEYS``), so every process that loads a config knows the section; this module only reads it.

```yaml
gateway:
  listen: /var/run/docker.sock          # the socket users' tools talk to
  upstream: /run/ds01/dockerd.sock      # the daemon's own socket (daemon.json hosts)
  socket_group: docker                  # group of `listen`
  socket_mode: "0666"                   # "0666": every login may connect (each caller is identified by the
                                        # kernel, SO_PEERCRED, and held to their own limits); "0660": the group only
  allowed_capabilities: [CHOWN, ...]    # --cap-add beyond this list is refused (default: Docker's, minus NET_RAW)
  allowed_devices: []                   # host devices a user may pass with --device
  bind_prefixes: ["{home}"]             # bind-mount sources allowed read-write ({home} = caller's home)
  readonly_bind_prefixes: []            # bind-mount sources allowed read-only (shared data sets)
  allow_host_network: false             # --network host (and build --network host)
  max_body_bytes: 16m                   # largest JSON request body the gateway reads to check it
  max_upload_bytes: 8g                  # largest build context or `docker import` tar (spooled to disk first)
```
"""

from __future__ import annotations

from .. import config as config_mod

SECTION = "gateway"


def defaults() -> dict:
    """The section's values when no config ever loaded."""
    return config_mod.section_defaults(SECTION)
