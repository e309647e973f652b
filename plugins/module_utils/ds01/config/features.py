"""Sections of resource-limits.yaml that belong to one feature, declared here as data.

Each entry is ``section name -> {key: (Kind, default)}``, like the core sections in ``schema``. The config
package owns every section of the file, so every process that loads a config knows them all, whatever else it
imported; the feature itself imports the config package and reads its values with ``Config.section(name)``
(or ``section_defaults(name)`` when no config ever loaded). The config package imports no feature module.

- ``gateway``: the Docker API gateway (read by ``gateway/server.py``; documented in ``gateway/schema.py``).
- ``images``: the lab-approved images of ``ds01 container deploy`` (read by ``images.py``).
"""

from __future__ import annotations

from typing import Any

from .units import Kind, boolean, file_path, size, string, string_list

GATEWAY = "gateway"
IMAGES = "images"

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


def _image_ref(value: object) -> None:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise ValueError("an image reference such as 'ubuntu:22.04' or 'local/debian-min:bookworm'")


GATEWAY_KEYS: dict[str, tuple[Kind, Any]] = {
    "listen": (Kind(file_path, nullable=False), "/var/run/docker.sock"),
    "upstream": (Kind(file_path, nullable=False), "/run/ds01/dockerd.sock"),
    "socket_group": (Kind(string(), nullable=False), "docker"),
    "socket_mode": (Kind(_socket_mode, nullable=False), "0666"),
    "allowed_capabilities": (
        Kind(string_list(_capability, "a list of capability names"), nullable=False),
        DEFAULT_CAPABILITIES,
    ),
    "allowed_devices": (Kind(string_list(_device, "a list of /dev paths")), ()),
    "bind_prefixes": (Kind(string_list(_prefix, "a list of absolute paths")), ("{home}",)),
    "readonly_bind_prefixes": (Kind(string_list(_prefix, "a list of absolute paths")), ()),
    "allow_host_network": (Kind(boolean, nullable=False), False),
    "max_body_bytes": (Kind(size, nullable=False), 16 * 1024 * 1024),
    "max_upload_bytes": (Kind(size, nullable=False), 8 << 30),
}

IMAGES_KEYS: dict[str, tuple[Kind, Any]] = {
    "allowed": (Kind(string_list(_image_ref, "a list of image references")), ()),
    "default": (Kind(string(r"^\S+$", "an image reference such as 'ubuntu:22.04'")), None),
    "deploy_network": (Kind(string(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", "a network name")), "none"),
}

# In the order they are checked (and listed among the top-level keys).
FEATURE_SECTIONS: dict[str, dict[str, tuple[Kind, Any]]] = {IMAGES: IMAGES_KEYS, GATEWAY: GATEWAY_KEYS}
