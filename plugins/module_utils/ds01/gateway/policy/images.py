"""What an image brings along into a container or a commit: its labels, healthcheck and anonymous volumes."""

from __future__ import annotations

from typing import Optional

from ... import identity
from .base import Refusal, denied, gateway_label


def image_label_refusal(image: str, labels: Optional[dict]) -> Optional[Refusal]:
    """A build may not start from an image whose labels would give its step containers an owner, a GPU,
    protection or an exemption: the daemon makes those containers itself, and they inherit the labels."""
    hazards = sorted(str(k) for k, v in (labels or {}).items() if identity.inherited_label_hazard(str(k), v))
    if not hazards:
        return None
    return denied(
        f"the image {image} carries the label {hazards[0]}={labels[hazards[0]]}, which only the server sets; the "
        "containers this build would make from it would inherit it. Build from an image without it (rebuild "
        "yours from its own base: images built through ds01 no longer carry it)."
    )


def commit_labels(body: dict, container_labels: Optional[dict], login: str) -> dict:
    """``docker commit`` copies the container's labels into the image: every label only the server sets
    is given an empty value in the commit (the daemon keeps the commit's value over the container's),
    and the image is labelled with its maker."""
    labels = body.get("Labels") if isinstance(body.get("Labels"), dict) else {}
    labels = {str(k): str(v) for k, v in labels.items() if not identity.reserved_label(str(k))}
    for key in container_labels or {}:
        if identity.reserved_label(str(key)):
            labels[str(key)] = ""
    labels[identity.IMAGE_MAKER_LABEL] = login
    body["Labels"] = labels
    return body


MIN_HEALTH_INTERVAL_S = 5.0


def healthcheck_refusal(body: dict, image_config: Optional[dict]) -> Optional[Refusal]:
    """Each health check is a ``runc exec`` that dockerd and containerd pay for outside the user's slice:
    a check more often than every MIN_HEALTH_INTERVAL_S seconds is refused, whether the create asks
    for it or the image brings it."""
    own = body.get("Healthcheck") if isinstance(body.get("Healthcheck"), dict) else {}
    inherited = (image_config or {}).get("Healthcheck") or {}
    # the daemon fills each unset (zero, empty) field of the create's check from the image's
    check = {**inherited, **{k: v for k, v in own.items() if v not in (None, 0, "", [])}}
    test = check.get("Test") or []
    if not test or test == ["NONE"]:
        return None
    for key, flag in (("Interval", "interval"), ("StartInterval", "start-interval")):
        name = f"--health-{flag}" if own.get(key) else f"the image's HEALTHCHECK --{flag}"
        value = check.get(key) or 0
        if isinstance(value, (int, float)) and 0 < value < MIN_HEALTH_INTERVAL_S * 1e9:
            return denied(
                f"{name} of {value / 1e9:g}s is too often: every check is a process the Docker daemon starts "
                f"outside your share of the machine. Use {MIN_HEALTH_INTERVAL_S:g}s or more "
                f"(`--health-interval {MIN_HEALTH_INTERVAL_S:g}s`), or --no-healthcheck."
            )
    return None


def no_copy_anonymous_volumes(body: dict, image_volumes: Optional[dict]) -> dict:
    """Anonymous volumes (``-v /PATH``, an image's ``VOLUME``, ``--mount type=volume`` without a source) start
    empty: dockerd would otherwise copy the image's files at that path into each new one at create time, before
    anything runs, and a plain `docker rm` leaves them behind, owned by nobody (round-8 attack: `-v /usr` three
    times left 1.24 GB). Named volumes are the user's own, counted and removable, and keep Docker's copy."""
    host = body.setdefault("HostConfig", {})
    mounts = [m for m in host.get("Mounts") or [] if isinstance(m, dict)]
    for mount in mounts:
        if str(mount.get("Type") or "volume") == "volume" and not mount.get("Source"):
            options = dict(mount.get("VolumeOptions") or {})
            options["NoCopy"] = True
            mount["VolumeOptions"] = options
    taken = {str(m.get("Target") or "").rstrip("/") for m in mounts}
    for bind in host.get("Binds") or []:
        parts = str(bind).split(":")
        if len(parts) >= 2:
            taken.add(parts[1].rstrip("/"))
    paths = list((body.get("Volumes") or {}).keys()) + list((image_volumes or {}).keys())
    for path in dict.fromkeys(str(p) for p in paths):
        if path.rstrip("/") not in taken:
            mounts.append({"Type": "volume", "Target": path, "VolumeOptions": {"NoCopy": True}})
            taken.add(path.rstrip("/"))
    if mounts:
        host["Mounts"] = mounts
    return body


def neutralise_image_labels(body: dict, image_labels: Optional[dict]) -> dict:
    """Gateway labels an image carries (``LABEL ds01.gpu.uuids=…``) are inherited by its containers;
    each one the gateway did not stamp is overwritten with an empty value, which readers ignore."""
    labels = body.setdefault("Labels", {})
    for key in image_labels or {}:
        if gateway_label(str(key)) and str(key) not in labels:
            labels[str(key)] = ""
    return body
