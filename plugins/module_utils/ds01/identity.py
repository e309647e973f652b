"""Who is who: the one username sanitiser, the one owner resolver, the admin check.

Everything that turns a login into a slice name, or a container into its owner, calls this
module; nothing else in the project re-implements these rules (upstream had five owner chains
and two sanitisers that disagreed).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
from collections.abc import Iterable
from typing import Any, Optional

SLICE_NAME_MAX = 32
_HASH_LEN = 6
_INVALID = re.compile(r"[^A-Za-z0-9_]")
_UNDERSCORES = re.compile(r"_+")
LOGIN_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@+-]{0,255}$")


def valid_login(login: object) -> bool:
    """A login we accept anywhere (config files, labels, the kernel's answer via passwd)."""
    return isinstance(login, str) and bool(LOGIN_RE.match(login))


def sanitize_username(login: str) -> str:
    """Login → the token used inside systemd slice names.

    Rules (reference §6.1, with its divergences removed): drop the ``@domain`` part; every
    character outside ``[A-Za-z0-9_]`` becomes ``_`` (so no ``-``, which systemd reads as
    hierarchy, and no ``.``); runs of ``_`` collapse; leading/trailing ``_`` go. A result over
    32 characters keeps its first 25 characters and gets ``_`` plus 6 hex digits of the SHA-256
    of the *original* login, so long names stay distinct. An empty result (a login made only of
    punctuation) becomes ``u_<hash>``. Two logins may still sanitise alike (``alice@a`` and
    ``alice@b``): the config check reports such collisions and the admin resolves them with
    ``slice_name`` in user-overrides.yaml.
    """
    local = login.split("@", 1)[0]
    name = _UNDERSCORES.sub("_", _INVALID.sub("_", local)).strip("_")
    if name and len(name) <= SLICE_NAME_MAX:
        return name
    import hashlib  # deferred: only long or empty names need it, and every ds01 command imports this module

    digest = hashlib.sha256(login.encode("utf-8")).hexdigest()[:_HASH_LEN]
    if not name:
        return f"u_{digest}"
    return name[: SLICE_NAME_MAX - _HASH_LEN - 1].rstrip("_") + "_" + digest


def slice_unit(group: str, sanitized: str) -> str:
    """``ds01-<group>-<sanitized>.slice``: the user's slice (parent ``ds01-<group>.slice``)."""
    return f"ds01-{group}-{sanitized}.slice"


def group_slice_unit(group: str) -> str:
    return f"ds01-{group}.slice"


ROOT_SLICE = "ds01.slice"


def is_admin(login: Optional[str], uid: int, admin_group: str, admin_users: Iterable[str] = ()) -> bool:
    """The one admin check: root, a login in ``admin_users``, or a member of ``admin_group``
    (listed in the group or having it as primary group). Unknown groups or logins: not admin."""
    if uid == 0:
        return True
    if not login:
        return False
    if login in admin_users:
        return True
    try:
        group = grp.getgrnam(admin_group)
    except KeyError:
        return False
    if login in group.gr_mem:
        return True
    try:
        return pwd.getpwnam(login).pw_gid == group.gr_gid
    except KeyError:
        return False


# Below UID_MIN (Debian's login.defs) and at the overflow ids (nobody): system accounts, not people.
# Root is a person here (the admin).
UID_MIN = 1000
OVERFLOW_UIDS = (65534, 4294967294, 4294967295)


def system_account(uid: int) -> bool:
    """True for service accounts (uid 1-999, nobody): no person logs in as them."""
    return uid != 0 and (uid < UID_MIN or uid in OVERFLOW_UIDS)


def login_of_uid(uid: int) -> Optional[str]:
    """The login name of ``uid`` (None when the account database does not know it)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


# --------------------------------------------------------------------------------------------
# The one owner resolver (appended by the allocator issue)
# --------------------------------------------------------------------------------------------

OWNER_LABEL = "ds01.user"
LEGACY_OWNER_LABEL = "aime.mlc.USER"
DEVCONTAINER_FOLDER_LABEL = "devcontainer.local_folder"
COMPOSE_DIR_LABEL = "com.docker.compose.project.working_dir"
AIME_NAME_RE = re.compile(r"^(?P<name>.+)\._\.(?P<uid>\d+)$")

# How an owner was found (stable strings: they appear in JSON and in the event log).
# Every label container_owner reads: whoever can put one on a container can make it somebody's.
OWNER_LABELS = (OWNER_LABEL, LEGACY_OWNER_LABEL, DEVCONTAINER_FOLDER_LABEL, COMPOSE_DIR_LABEL)
# Who made an image (the gateway stamps it on users' builds and commits). Not an owner label: the
# containers a build makes from an image inherit it, and nothing reads it on a container.
IMAGE_MAKER_LABEL = "ds01.image.maker"


# Labels only the gateway (or an admin) sets: ownership, protection, GPU holdings, lifecycle marks. Every
# label a reader trusts on a container must be listed here (or under a prefix below).
SERVER_LABELS = (
    "ds01.user",
    "ds01.user.sanitized",
    "ds01.managed",
    "ds01.container_type",
    "ds01.interface",
    "ds01.created_at",
    "ds01.protected",
    "ds01.monitoring",
    "ds01.slice",
    "ds01.owner",
    "ds01.binds",
)
SERVER_LABEL_PREFIXES = ("ds01.gpu.", "ds01.gpu_", "ds01.lifecycle.", "aime.mlc")
# Request labels: a user's input under a server prefix (``ds01.gpu.request=full|<MIG profile>``, the GPU
# kind a client that cannot pass flags asks for). The gateway reads it from the create body as a request
# and checks it like any input; it stays on the container as the user wrote it, and no reader takes it
# for a fact (what a container holds is in ``ds01.gpu.slots``/``uuids`` and its DeviceRequests).
GPU_REQUEST_LABEL = "ds01.gpu.request"
REQUEST_LABELS = (GPU_REQUEST_LABEL,)


def server_label(key: str) -> bool:
    return key not in REQUEST_LABELS and (key in SERVER_LABELS or key.startswith(SERVER_LABEL_PREFIXES))


def reserved_label(key: str) -> bool:
    """Labels a user may not set: the server's (``server_label``), the image maker's, and every label
    ``container_owner`` reads. Containers the daemon makes by itself from an image (a classic build's
    steps) inherit the image's labels without passing the gateway, so an image must not carry them
    either, with a value: see ``inherited_label_hazard``."""
    return server_label(key) or key in OWNER_LABELS or key == IMAGE_MAKER_LABEL


def inherited_label_hazard(key: str, value: object) -> bool:
    """True when an image label would give the containers made from it an owner, a GPU, protection or an
    exemption: a reserved label with a value (an empty value is what readers ignore), but the maker's."""
    return reserved_label(key) and key != IMAGE_MAKER_LABEL and value not in (None, "")


OWNER_BY_LABEL = "ds01.user"
OWNER_BY_LEGACY_LABEL = "aime.mlc.USER"
OWNER_BY_NAME_UID = "name_uid"
OWNER_BY_DEVCONTAINER = "devcontainer_folder"
OWNER_BY_COMPOSE_DIR = "compose_dir"
OWNER_UNKNOWN = "unknown"


def _container_labels(attrs: Any) -> dict:
    """Labels from an inspect document (``Config.Labels``) or a list summary (``Labels``)."""
    if not isinstance(attrs, dict):
        return {}
    labels = attrs.get("Labels")
    if labels is None:
        labels = (attrs.get("Config") or {}).get("Labels")
    return dict(labels or {})


def _container_name(attrs: Any) -> str:
    if not isinstance(attrs, dict):
        return ""
    name = attrs.get("Name")
    if not name:
        names = attrs.get("Names") or []
        name = names[0] if names else ""
    return str(name).lstrip("/")


def _folder_owner(folder: str) -> Optional[str]:
    """Login of the uid owning ``folder`` (or its nearest existing parent below a top-level
    directory such as /home: never / or /home itself, which root owns for everyone)."""
    path = os.path.normpath(folder)
    if not os.path.isabs(path):
        return None
    while path.count(os.sep) >= 2:  # /home/alice is the shallowest path that can name a user
        try:
            return login_of_uid(os.stat(path).st_uid)
        except FileNotFoundError:
            path = os.path.dirname(path)
        except OSError:
            return None
    return None


def container_owner(attrs: Any) -> tuple[Optional[str], str]:
    """The owner of a container and how it was found: ``(login or None, method)``.

    ``attrs`` is Docker's inspect document or a list summary. The chain (reference §3.3, unified):

    1. ``ds01.user`` label — the gateway sets it from the kernel-verified uid (a caller-supplied
       value is overwritten there), so it is trusted;
    2. legacy ``aime.mlc.USER`` label (containers of the old system keep working);
    3. an AIME-style name ``<name>._.<uid>`` → the uid's login (passwd);
    4. ``devcontainer.local_folder`` → the login owning that folder (``os.stat``), never the
       ``/home/<login>`` spelled in the path, which anyone can write into a label;
    5. ``com.docker.compose.project.working_dir`` → the login owning that folder, the same way;
    6. ``(None, "unknown")``.
    """
    labels = _container_labels(attrs)
    for key, method in ((OWNER_LABEL, OWNER_BY_LABEL), (LEGACY_OWNER_LABEL, OWNER_BY_LEGACY_LABEL)):
        value = labels.get(key)
        if valid_login(value):
            return value, method
    match = AIME_NAME_RE.match(_container_name(attrs))
    if match:
        login = login_of_uid(int(match.group("uid")))
        if login:
            return login, OWNER_BY_NAME_UID
    for key, method in ((DEVCONTAINER_FOLDER_LABEL, OWNER_BY_DEVCONTAINER), (COMPOSE_DIR_LABEL, OWNER_BY_COMPOSE_DIR)):
        folder = labels.get(key)
        login = _folder_owner(folder) if isinstance(folder, str) and folder else None
        if login:
            return login, method
    return None, OWNER_UNKNOWN
