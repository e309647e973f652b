"""The ``gateway`` section of resource-limits.yaml.

The section must be registered before any config is loaded, so config.py imports this module
(``from .gateway import schema``); importing it twice is harmless.

```yaml
gateway:
  listen: /var/run/docker.sock          # the socket users' tools talk to
  upstream: /run/ds01/dockerd.sock      # the daemon's own socket (daemon.json hosts)
  socket_group: docker                  # group of `listen`
  socket_mode: "0666"                   # "0666": every login may connect (each caller is identified by the
                                        # kernel, SO_PEERCRED, and held to their own limits); "0660": the group only
  allowed_capabilities: [CHOWN, ...]    # --cap-add beyond this list is refused
  allowed_devices: []                   # host devices a user may pass with --device
  bind_prefixes: ["{home}"]             # bind-mount sources allowed read-write ({home} = caller's home)
  readonly_bind_prefixes: []            # bind-mount sources allowed read-only (shared data sets)
  allow_host_network: false             # --network host (and build --network host)
  max_body_bytes: 16m                   # largest JSON request body the gateway reads to check it
```
"""

from __future__ import annotations

from .. import config as config_mod

SECTION = "gateway"

# The capabilities Docker grants by default, minus NET_RAW (raw sockets are not needed for
# lab work and are the usual first step of network attacks). Adding these back is harmless;
# anything else (SYS_ADMIN, SYS_PTRACE, NET_ADMIN, SYS_MODULE, …) reaches the host kernel.
DEFAULT_CAPABILITIES = (
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
)


def _capability(value: object) -> None:
    if not isinstance(value, str) or not value.replace("_", "").isalnum():
        raise ValueError("a capability name such as 'SYS_PTRACE'")


def _device(value: object) -> None:
    if not isinstance(value, str) or not value.startswith("/dev/"):
        raise ValueError("a device path under /dev")


def _prefix(value: object) -> None:
    if not isinstance(value, str) or not value.startswith(("/", "{home}")):
        raise ValueError("an absolute path, or one starting with {home}")


def _socket_mode(value: object) -> str:
    # YAML 1.1 reads an unquoted 0666 as the octal number 438: both spellings mean the same mode.
    text = f"0{value:o}" if isinstance(value, int) and not isinstance(value, bool) else value
    if text not in ("0666", "0660"):
        raise ValueError('"0666" (every login; the gateway identifies each caller) or "0660" (socket_group only)')
    return str(text)


KEYS = {
    "listen": (config_mod.Kind(config_mod._abs_or_rel_path, nullable=False), "/var/run/docker.sock"),
    "upstream": (config_mod.Kind(config_mod._abs_or_rel_path, nullable=False), "/run/ds01/dockerd.sock"),
    "socket_group": (config_mod.Kind(config_mod._string(), nullable=False), "docker"),
    "socket_mode": (config_mod.Kind(_socket_mode, nullable=False), "0666"),
    "allowed_capabilities": (
        config_mod.Kind(config_mod._string_list(_capability, "a list of capability names"), nullable=False),
        DEFAULT_CAPABILITIES,
    ),
    "allowed_devices": (config_mod.Kind(config_mod._string_list(_device, "a list of /dev paths")), ()),
    "bind_prefixes": (config_mod.Kind(config_mod._string_list(_prefix, "a list of absolute paths")), ("{home}",)),
    "readonly_bind_prefixes": (
        config_mod.Kind(config_mod._string_list(_prefix, "a list of absolute paths")),
        (),
    ),
    "allow_host_network": (config_mod.Kind(config_mod._boolean, nullable=False), False),
    "max_body_bytes": (config_mod.Kind(config_mod._size, nullable=False), 16 * 1024 * 1024),
}


def register() -> None:
    """Declare the section (idempotent)."""
    config_mod.register_section(SECTION, KEYS)


def defaults() -> dict:
    """The section's values when no config ever loaded."""
    return {key: default for key, (_kind, default) in KEYS.items()}


register()
