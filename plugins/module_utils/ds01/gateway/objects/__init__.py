"""Builds, images, tags, networks and ``docker cp`` uploads: the gateway's decisions, as pure functions.

Nothing here does I/O: the connection (connection.py, builds.py, claims.py) asks the daemon and the
claim store and passes what they said in. A decision is None (allowed) or a verdict ``(code, sentence)``,
which the connection turns into a refusal. This package imports no gateway sibling (policy/ may call it
without an import circle). One module per subject: base (codes, verdicts), builds (build parameters,
registries, form bodies), images (references, tags and image routes), networks, archive (the docker cp
tar rewriter and a build's context); this package re-exports their public names.

Rules for non-admin callers (admins pass unchanged and claim nothing):

- **BuildKit**: ``/grpc`` (BuildKit's full control API, what buildx speaks) is refused;
  ``/session`` stays open (file sync of a ``DOCKER_BUILDKIT=1 docker build`` goes through it).
  ``POST /build`` takes only the query parameters dockerd 20.10 reads (``newImageBuildOptions`` in
  moby's ``api/server/router/build/build_routes.go``), each validated: ``remote`` (the daemon would
  fetch a URL from the host's loopback, where other users' notebooks listen), ``outputs`` (an
  exporter can write images under any name), ``securityopt`` and ``pull`` are refused, the network
  mode is ``default``/``none``/``bridge`` only, the cgroup parent is always the caller's slice, and
  a parameter given twice (dockerd reads the first, a check might read another) is refused.
  Defence in depth on the daemon: daemon.json's builder entitlements must stay off
  (``"builder": {"Entitlements": {"NetworkHost": false, "SecurityInsecure": false}}``, merged by the
  ds01_slices role), because dockerd 20.10 grants ``network.host`` to BuildKit solves by default.
- **URL sources**: ``images/create?fromSrc=<URL>`` is refused (fromSrc=- uploads are fine);
  ``images/load`` is refused: its tarball sets any tags it names, and they are only known after
  reading the whole archive (``docker save`` writes ``manifest.json`` last).
- **Tags have owners**: a tag belongs to the user whose request created it (build -t, tag, commit,
  import, pull). A target tag must be absent (it is then claimed) or already the caller's; a tag
  that exists without a claim (made before the gateway, or by an admin) is read-only to users.
  Deleting by tag needs the tag's claim; deleting by id, id prefix or digest needs every tag of
  the image to be the caller's.
- **Networks have owners** (``ds01.user`` stamped at create): connect, disconnect and remove need
  the caller's own network; of the built-in networks only ``none`` can be connected to.
- **docker cp into a container**: the tar stream is rewritten as it passes (``ArchiveRewriter``).
"""

from __future__ import annotations

from .archive import (
    BLOCK,
    COMPRESSED,
    DEVICE_TYPES,
    ENTRY_TYPES,
    HEADER_ONLY,
    MAX_PENDING,
    MAX_SPECIAL,
    META_TYPES,
    PAX_KEEP,
    PAX_KEEP_PREFIX,
    ZERO_BLOCK,
    ArchiveRewriter,
    BodyRefused,
    BuildContextReader,
    compression_of,
)
from .base import NOT_FOUND, NOT_OWNER, POLICY_DENIED, Verdict, denied
from .builds import (
    BUILD_NETWORKS,
    BUILD_PARAMETERS,
    CLIENT_SESSION,
    FORM_TYPES,
    GRPC_SENTENCE,
    check_build,
    form_content_type,
    registry_of,
    registry_verdict,
)
from .images import (
    DEFAULT_DOMAIN,
    IMAGES_CREATE_PARAMETERS,
    LOAD_SENTENCE,
    check_images_create,
    check_retag,
    delete_verdict,
    familiar,
    is_id_prefix,
    normal_tags,
    parse_reference,
    repository_path,
    tag_target,
    tag_verdict,
)
from .networks import (
    BUILTIN_NETWORKS,
    CREATE_NETWORK_MODES,
    network_connect_verdict,
    network_delete_verdict,
    network_names,
    network_refusal,
)

__all__ = [
    "BLOCK",
    "BUILD_NETWORKS",
    "BUILD_PARAMETERS",
    "BUILTIN_NETWORKS",
    "CLIENT_SESSION",
    "COMPRESSED",
    "CREATE_NETWORK_MODES",
    "DEFAULT_DOMAIN",
    "DEVICE_TYPES",
    "ENTRY_TYPES",
    "FORM_TYPES",
    "GRPC_SENTENCE",
    "HEADER_ONLY",
    "IMAGES_CREATE_PARAMETERS",
    "LOAD_SENTENCE",
    "MAX_PENDING",
    "MAX_SPECIAL",
    "META_TYPES",
    "NOT_FOUND",
    "NOT_OWNER",
    "PAX_KEEP",
    "PAX_KEEP_PREFIX",
    "POLICY_DENIED",
    "ZERO_BLOCK",
    "ArchiveRewriter",
    "BodyRefused",
    "BuildContextReader",
    "Verdict",
    "check_build",
    "check_images_create",
    "check_retag",
    "compression_of",
    "delete_verdict",
    "denied",
    "familiar",
    "form_content_type",
    "is_id_prefix",
    "network_connect_verdict",
    "network_delete_verdict",
    "network_names",
    "network_refusal",
    "normal_tags",
    "parse_reference",
    "registry_of",
    "registry_verdict",
    "repository_path",
    "tag_target",
    "tag_verdict",
]
