"""Slurm's view of ds01's GPU inventory and limits (pure: data in, decision out).

- ``gres_entries`` turns the GPU inventory (``gpu.Inventory.slots()``) into gres.conf lines: a whole GPU is
  ``Name=gpu Type=<model> File=/dev/nvidia<i>``; a MIG instance is ``Name=gpu Type=<profile>`` with
  ``MultipleFiles=`` naming its parent GPU and its GPU-instance and compute-instance capability devices
  (``/dev/nvidia-caps/nvidia-cap<minor>``), which is what the devices cgroup must open for it.
- ``billing_weights`` weighs each GPU type in GPU sevenths, the one weight of ``gpu.gpueq`` scaled to
  integers: a whole GPU 7, a MIG instance its compute slices. Slurm keeps a job's billing as an integer,
  so a quota of ``max_gpu_equivalents: 2.0`` is ``billing=14`` and a ``1g.10gb`` instance costs 1 of it.
- ``desired_accounts`` maps the resolved limits of every known login to QOS and associations:
  one account per ds01 group, one QOS per group (``ds01-<group>``), and a QOS of their own
  (``ds01-<group>-<login>``) for users whose overrides change what Slurm enforces.
- ``parse_*`` read ``sacctmgr show ... -P -n`` and ``plan`` compares, returning the sacctmgr argv lists
  that make the database match; nothing is run here (``plugins/modules/slurm_accounts.py`` runs them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Optional

from . import gpu
from .record import field, record

BILLING_PER_GPU = gpu.MIG_SLICES_PER_GPU  # billing units of one whole GPU (a MIG slice is one)
QOS_PREFIX = "ds01-"
ORGANIZATION = "ds01"  # the Org of the accounts this code manages (others are never touched)
NVIDIA_MAJOR_DEV = "/dev/nvidia{index}"
NVIDIA_CAP_DEV = "/dev/nvidia-caps/nvidia-cap{minor}"
# /proc/driver/nvidia-caps/mig-minors numbering: config 1, monitor 2, then per GPU 15 GPU instances of
# (access + 8 compute instances) minors each. A real host's file wins over this (read_mig_minors).
_CAP_FIRST = 3
_CAPS_PER_GI = 9
_GIS_PER_GPU = 15
_TYPE_BAD = re.compile(r"[^a-z0-9._-]+")
_MIG_MINOR_LINE = re.compile(r"^gpu(\d+)/gi(\d+)(?:/ci(\d+))?/access\s+(\d+)$")
# sacctmgr's names for what ds01 sets on a QOS (the ``show`` column and the ``set`` key).
QOS_FIELDS = (
    ("MaxTRESPU", "MaxTRESPerUser"),
    ("MaxTRES", "MaxTRESPerJob"),
    ("MaxJobsPU", "MaxJobsPerUser"),
    ("MaxWall", "MaxWall"),
)
QOS_FORMAT = "Name,Description," + ",".join(show for show, _key in QOS_FIELDS)
ACCOUNT_FORMAT = "Account,Descr,Org"
ASSOC_FORMAT = "Cluster,Account,User,QOS,DefaultQOS"
USER_FORMAT = "User,DefaultAccount"


class SlurmPlanError(Exception):
    """The inputs cannot be expressed in Slurm; ``str()`` is a sentence for a person."""


# --------------------------------------------------------------------------------------------
# gres.conf and billing
# --------------------------------------------------------------------------------------------


@record(frozen=True)
class GresEntry:
    slot: str  # ds01's slot id: "0" or "1.2"
    gres_type: str  # a100-sxm4-40gb, 3g.20gb
    files: tuple  # device files; more than one for a MIG instance
    weight: int  # billing units (GPU sevenths)
    uuid: str

    def line(self) -> str:
        key = "MultipleFiles" if len(self.files) > 1 else "File"
        return f"Name=gpu Type={self.gres_type} {key}={','.join(self.files)}"


def gpu_type(name: str) -> str:
    """A whole GPU's gres type from its model name: ``NVIDIA A100-SXM4-40GB`` → ``a100-sxm4-40gb``."""
    text = name.strip().lower()
    if text.startswith("nvidia "):
        text = text[len("nvidia ") :]
    text = _TYPE_BAD.sub("_", text).strip("_")
    if not text:
        raise SlurmPlanError(f"the GPU name {name!r} gives no usable gres type; name the GPU in the topology")
    return text


def mig_cap_minor(gpu_index: int, gpu_instance: int, compute_instance: Optional[int] = None) -> int:
    """The nvidia-caps minor of a GPU instance (or of one of its compute instances), as the driver numbers them."""
    minor = _CAP_FIRST + gpu_index * _GIS_PER_GPU * _CAPS_PER_GI + gpu_instance * _CAPS_PER_GI
    return minor if compute_instance is None else minor + 1 + compute_instance


def read_mig_minors(text: str) -> dict:
    """``{(gpu, gi, ci or None): minor}`` from ``/proc/driver/nvidia-caps/mig-minors``."""
    minors = {}
    for line in text.splitlines():
        match = _MIG_MINOR_LINE.match(line.strip())
        if match:
            g, gi, ci, minor = match.groups()
            minors[(int(g), int(gi), None if ci is None else int(ci))] = int(minor)
    return minors


def _mig_files(slot: Any, minors: Mapping) -> tuple:
    # NVML gives the GPU- and compute-instance ids; a fake topology may not, and then the instance's
    # position stands in for its GPU instance id (and 0 for the compute instance).
    gi = slot.gpu_instance_id if slot.gpu_instance_id is not None else slot.mig_index
    ci = slot.compute_instance_id if slot.compute_instance_id is not None else 0
    caps = []
    for key in ((slot.gpu_index, gi, None), (slot.gpu_index, gi, ci)):
        minor = minors.get(key)
        caps.append(NVIDIA_CAP_DEV.format(minor=minor if minor is not None else mig_cap_minor(*key)))
    return (NVIDIA_MAJOR_DEV.format(index=slot.gpu_index), *caps)


def gres_entries(slots: Iterable[Any], mig_minors: Optional[Mapping] = None) -> list[GresEntry]:
    """One entry per allocatable slot (``gpu.Slot``), whole GPUs and MIG instances, in slot order."""
    minors = mig_minors or {}
    entries = []
    for slot in slots:
        if slot.mig_parent:
            continue
        if slot.kind == gpu.KIND_MIG:
            files = _mig_files(slot, minors)
            gres_type = slot.profile
        else:
            files = (NVIDIA_MAJOR_DEV.format(index=slot.gpu_index),)
            gres_type = gpu_type(slot.name)
        weight = round(gpu.gpueq(slot) * BILLING_PER_GPU)
        entries.append(GresEntry(slot=slot.slot_id, gres_type=gres_type, files=files, weight=weight, uuid=slot.uuid))
    return entries


def gres_types(entries: Iterable[GresEntry]) -> dict:
    """``{type: weight}`` in first-seen order; one type with two weights is an error."""
    types: dict = {}
    for entry in entries:
        if types.setdefault(entry.gres_type, entry.weight) != entry.weight:
            raise SlurmPlanError(
                f"the gres type {entry.gres_type} would weigh both {types[entry.gres_type]} and {entry.weight} "
                "GPU sevenths; give the GPUs distinct names in the topology"
            )
    return types


def billing_weights(entries: Iterable[GresEntry]) -> str:
    """``TRESBillingWeights`` of a partition: each typed GPU TRES at its weight (CPU and memory bill nothing)."""
    return ",".join(f"GRES/gpu:{name}={weight}" for name, weight in gres_types(entries).items())


def accounting_tres(entries: Iterable[GresEntry]) -> str:
    """``AccountingStorageTRES``: the GPU count and every typed GPU TRES (so limits and sreport see them)."""
    return ",".join(["gres/gpu", *(f"gres/gpu:{name}" for name in gres_types(entries))])


def node_gres(entries: Iterable[GresEntry]) -> str:
    """A node's ``Gres=`` value: ``gpu:<type>:<count>`` for each type."""
    counts: dict = {}
    for entry in entries:
        counts[entry.gres_type] = counts.get(entry.gres_type, 0) + 1
    return ",".join(f"gpu:{name}:{count}" for name, count in counts.items())


# --------------------------------------------------------------------------------------------
# QOS and associations from the limits
# --------------------------------------------------------------------------------------------


@record(frozen=True)
class Qos:
    name: str
    description: str
    max_tres_per_user: Mapping[str, int] = field(default_factory=dict)  # {"billing": 14}
    max_tres_per_job: Mapping[str, int] = field(default_factory=dict)  # {"gres/gpu": 2}
    max_jobs_per_user: Optional[int] = None
    max_wall_min: Optional[int] = None

    def limits(self) -> tuple:
        return (
            dict(self.max_tres_per_user),
            dict(self.max_tres_per_job),
            self.max_jobs_per_user,
            self.max_wall_min,
        )

    def as_dict(self) -> dict:
        return {
            "description": self.description,
            "MaxTRESPerUser": format_tres(self.max_tres_per_user) or None,
            "MaxTRESPerJob": format_tres(self.max_tres_per_job) or None,
            "MaxJobsPerUser": self.max_jobs_per_user,
            "MaxWall": format_minutes(self.max_wall_min),
        }


@record(frozen=True)
class Association:
    user: str
    account: str
    qos: str


@record(frozen=True)
class Accounts:
    """What the accounting database should hold for ds01: QOS by name, accounts, user → association."""

    cluster: str
    qos: Mapping[str, Qos]
    accounts: tuple
    users: Mapping[str, Association]

    def as_dict(self) -> dict:
        return {
            "cluster": self.cluster,
            "qos": {name: q.as_dict() for name, q in sorted(self.qos.items())},
            "accounts": list(self.accounts),
            "users": {u: {"account": a.account, "qos": a.qos} for u, a in sorted(self.users.items())},
        }


def format_tres(tres: Mapping[str, int]) -> str:
    return ",".join(f"{name}={count}" for name, count in sorted(tres.items()))


def format_minutes(minutes: Optional[int]) -> Optional[str]:
    """Minutes as sacctmgr prints a wall time: ``[D-]HH:MM:00``; None stays None."""
    if minutes is None:
        return None
    days, rest = divmod(minutes, 24 * 60)
    text = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{text}" if days else text


def qos_limits(limits: Any) -> tuple:
    """(MaxTRESPerUser, MaxTRESPerJob, MaxJobsPerUser, MaxWall minutes) of one resolved ``config.Limits``."""
    per_user = {}
    quota = limits.gpu_quota
    if quota is not None:
        per_user["billing"] = math.floor(quota * BILLING_PER_GPU + 1e-9)
    per_job = {}
    if limits.max_gpu_slots_per_container is not None:
        per_job["gres/gpu"] = int(limits.max_gpu_slots_per_container)
    jobs = limits.max_containers_per_user
    wall = None if limits.max_runtime_h is None else math.ceil(limits.max_runtime_h * 60 - 1e-9)
    return per_user, per_job, jobs, wall


def desired_accounts(config: Any, cluster: str, extra_users: Iterable[str] = ()) -> Accounts:
    """QOS, accounts and associations for every login ``config`` knows (plus ``extra_users``).

    ``config`` is a loaded ``config.Config``; every limit comes from its ``resolve`` (the one resolver).
    A group's QOS carries the limits its members share; a user whose override changes one of them gets
    a QOS of their own. Archived logins get nothing.
    """
    logins = dict(config.known_users())
    for login in extra_users:
        if login not in config.archived:
            logins.setdefault(login, config.group_of(login)[0])
    resolved = {login: config.resolve(login) for login in sorted(logins)}
    group_limits: dict = {}
    for limits in resolved.values():
        if not limits.is_override:
            group_limits.setdefault(limits.group, qos_limits(limits))
    qos: dict = {}
    users: dict = {}
    for login, limits in resolved.items():
        wanted = qos_limits(limits)
        if group_limits.get(limits.group) == wanted:
            name, description = f"{QOS_PREFIX}{limits.group}", f"ds01 group {limits.group}"
        else:  # an override that changes what Slurm enforces (or a group of overridden users only)
            name, description = f"{QOS_PREFIX}{limits.group}-{login}", f"ds01 override for {login}"
        qos[name] = Qos(name, description, *wanted)
        users[login] = Association(user=login, account=limits.group, qos=name)
    accounts = tuple(sorted({a.account for a in users.values()}))
    return Accounts(cluster=cluster, qos=qos, accounts=accounts, users=users)


# --------------------------------------------------------------------------------------------
# sacctmgr: what is there, and what to run
# --------------------------------------------------------------------------------------------


def _rows(text: str, width: int) -> list:
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        cells = line.split("|")
        rows.append((cells + [""] * width)[:width])
    return rows


def parse_tres(text: str) -> dict:
    """``billing=14,gres/gpu=2`` → ``{"billing": 14, "gres/gpu": 2}``."""
    tres = {}
    for item in text.split(","):
        name, sep, count = item.strip().partition("=")
        if sep and count.strip().lstrip("-").isdigit():
            tres[name.strip().lower()] = int(count)
    return tres


def parse_minutes(text: str) -> Optional[int]:
    """sacctmgr's wall time (``2-00:00:00``, ``01:30:00``, ``30:00``, ``UNLIMITED``, empty) → minutes or None."""
    text = text.strip()
    if not text or text.upper() in ("UNLIMITED", "INFINITE"):
        return None
    days, sep, clock = text.partition("-")
    if not sep:
        days, clock = "0", text
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, minutes, seconds = parts
    return int(days) * 24 * 60 + hours * 60 + minutes + (1 if seconds else 0)


def _int_or_none(text: str) -> Optional[int]:
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() and int(text) >= 0 else None


def parse_qos(text: str) -> dict:
    """``sacctmgr -P -n show qos format=<QOS_FORMAT>`` → ``{name: Qos}``."""
    found = {}
    for name, description, per_user, per_job, jobs, wall in _rows(text, 6):
        found[name] = Qos(
            name=name,
            description=description,
            max_tres_per_user=parse_tres(per_user),
            max_tres_per_job=parse_tres(per_job),
            max_jobs_per_user=_int_or_none(jobs),
            max_wall_min=parse_minutes(wall),
        )
    return found


def parse_accounts(text: str) -> dict:
    """``sacctmgr -P -n show account format=<ACCOUNT_FORMAT>`` → ``{account: organization}``."""
    return {account: org for account, _descr, org in _rows(text, 3)}


def parse_associations(text: str, cluster: str) -> dict:
    """``sacctmgr -P -n show assoc format=<ASSOC_FORMAT>`` → ``{(account, user): (qos set, default qos)}``
    for ``cluster`` (an account's own association has user ``""``)."""
    found = {}
    for assoc_cluster, account, user, qos, default_qos in _rows(text, 5):
        if assoc_cluster == cluster:
            found[(account, user)] = (frozenset(q for q in qos.split(",") if q), default_qos)
    return found


def parse_users(text: str) -> dict:
    """``sacctmgr -P -n show user format=<USER_FORMAT>`` → ``{user: default account}``."""
    return {row[0]: row[1] for row in _rows(text, 2)}


@record(frozen=True)
class Current:
    clusters: frozenset
    qos: Mapping[str, Qos]
    accounts: Mapping[str, str]  # account -> organization
    associations: Mapping[tuple, tuple]  # (account, user) -> (qos set, default qos)
    users: Mapping[str, str]  # user -> default account


def _qos_set(name: str, wanted: Qos, have: Optional[Qos]) -> list:
    values = (
        ("MaxTRESPerUser", wanted.max_tres_per_user, have.max_tres_per_user if have else {}),
        ("MaxTRESPerJob", wanted.max_tres_per_job, have.max_tres_per_job if have else {}),
    )
    sets = []
    for key, want, got in values:
        if want != got:
            cleared = {tres: -1 for tres in got if tres not in want}
            sets.append(f"{key}={format_tres({**cleared, **want})}")
    for key, want, got in (
        ("MaxJobsPerUser", wanted.max_jobs_per_user, have.max_jobs_per_user if have else None),
        ("MaxWall", wanted.max_wall_min, have.max_wall_min if have else None),
    ):
        if want != got:
            sets.append(f"{key}={-1 if want is None else want}")
    if have is None or have.description != wanted.description:
        sets.append(f"Description={wanted.description}")
    return ["modify", "qos", "where", f"name={name}", "set", *sets] if sets else []


def plan(desired: Accounts, current: Current, prune: bool = True) -> list:
    """The sacctmgr argument lists (without ``sacctmgr -i``) that turn ``current`` into ``desired``, in order."""
    steps: list = []
    cluster = desired.cluster
    if cluster not in current.clusters:
        steps.append(["add", "cluster", cluster])
    for name, wanted in sorted(desired.qos.items()):
        have = current.qos.get(name)
        if have is None:
            steps.append(["add", "qos", name])
        change = _qos_set(name, wanted, have)
        if change:
            steps.append(change)
    for account in desired.accounts:
        org = current.accounts.get(account)
        if org is None:
            steps.append(
                [
                    "add",
                    "account",
                    account,
                    f"cluster={cluster}",
                    f"Description=ds01 group {account}",
                    f"Organization={ORGANIZATION}",
                ]
            )
        elif org != ORGANIZATION:
            raise SlurmPlanError(
                f"the Slurm account {account} exists with organization {org or '(none)'}, not {ORGANIZATION}: "
                "ds01 will not take over an account it did not make; rename the ds01 group or the account"
            )
        elif (account, "") not in current.associations:
            steps.append(["add", "account", account, f"cluster={cluster}"])
    ours = {a for a, org in current.accounts.items() if org == ORGANIZATION}
    for login, assoc in sorted(desired.users.items()):
        have = current.associations.get((assoc.account, login))
        if have is None:
            steps.append(
                [
                    "add",
                    "user",
                    login,
                    f"account={assoc.account}",
                    f"cluster={cluster}",
                    f"qos={assoc.qos}",
                    f"defaultqos={assoc.qos}",
                ]
            )
        elif have != (frozenset([assoc.qos]), assoc.qos):
            steps.append(
                [
                    "modify", "user", "where", f"name={login}", f"account={assoc.account}", f"cluster={cluster}",
                    "set", f"qos={assoc.qos}", f"defaultqos={assoc.qos}",
                ]
            )  # fmt: skip
        if (
            login in current.users and current.users[login] != assoc.account
        ):  # a new user's first account is its default
            steps.append(["modify", "user", "where", f"name={login}", "set", f"defaultaccount={assoc.account}"])
        for account, user in sorted(current.associations):
            if user == login and account in ours and account != assoc.account:
                steps.append(["delete", "user", login, f"account={account}", f"cluster={cluster}"])
    if prune:
        for account, user in sorted(current.associations):
            if user and account in ours and user not in desired.users:
                steps.append(["delete", "user", user, f"account={account}", f"cluster={cluster}"])
        for account in sorted(ours - set(desired.accounts)):
            steps.append(["delete", "account", account])
        for name in sorted(current.qos):
            if name.startswith(QOS_PREFIX) and name not in desired.qos:
                steps.append(["delete", "qos", name])
    return steps


def render_state(accounts: Accounts) -> str:
    """A stable text of ``accounts`` for a diff (one line per fact)."""
    lines = [f"cluster {accounts.cluster}"]
    for name, q in sorted(accounts.qos.items()):
        limits = " ".join(f"{k}={v}" for k, v in q.as_dict().items() if k != "description" and v is not None)
        lines.append(f"qos {name} {limits}".rstrip())
    lines.extend(f"account {a}" for a in accounts.accounts)
    lines.extend(f"user {u} account={a.account} qos={a.qos}" for u, a in sorted(accounts.users.items()))
    return "\n".join(lines) + "\n"


def current_as_accounts(current: Current, cluster: str) -> Accounts:
    """What the database holds that ds01 manages, in the shape of ``Accounts`` (the diff's *before*)."""
    ours = {a for a, org in current.accounts.items() if org == ORGANIZATION}
    users = {}
    for (account, user), (qos, default_qos) in sorted(current.associations.items()):
        if user and account in ours:
            users[user] = Association(user=user, account=account, qos=default_qos or ",".join(sorted(qos)))
    return Accounts(
        cluster=cluster if cluster in current.clusters else "(none)",
        qos={n: q for n, q in current.qos.items() if n.startswith(QOS_PREFIX)},
        accounts=tuple(sorted(ours)),
        users=users,
    )
