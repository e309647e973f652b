"""The one owner resolver: ds01.user → aime.mlc.USER → name._.uid → devcontainer folder → unknown."""

from __future__ import annotations

import os
import pwd

import pytest

from ansible_collections.ds01.infra.plugins.module_utils.ds01 import identity

ME = pwd.getpwuid(os.getuid()).pw_name


def _unknown_uid():
    uid = 4_000_000_000
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


def inspect_doc(name="c", labels=None):
    return {"Name": f"/{name}", "Config": {"Labels": labels or {}}}


def summary_doc(name="c", labels=None):
    return {"Names": [f"/{name}"], "Labels": labels or {}}


@pytest.mark.parametrize("doc", [inspect_doc, summary_doc], ids=["inspect", "summary"])
@pytest.mark.parametrize(
    ("name", "labels", "expected"),
    [
        ("x", {"ds01.user": "alice"}, ("alice", "ds01.user")),
        ("x", {"ds01.user": "alice", "aime.mlc.USER": "bob"}, ("alice", "ds01.user")),
        ("x", {"aime.mlc.USER": "bob"}, ("bob", "aime.mlc.USER")),
        ("x", {"ds01.user": "no spaces allowed", "aime.mlc.USER": "bob"}, ("bob", "aime.mlc.USER")),
        ("x", {"ds01.user": ""}, (None, "unknown")),
        (f"train._.{os.getuid()}", {}, (ME, "name_uid")),
        (f"train._.{_unknown_uid()}", {}, (None, "unknown")),
        ("train._.notanumber", {}, (None, "unknown")),
        ("plain", {}, (None, "unknown")),
    ],
)
def test_owner_chain(doc, name, labels, expected):
    assert identity.container_owner(doc(name, labels)) == expected


def test_devcontainer_folder_owner_comes_from_the_filesystem(tmp_path):
    project = tmp_path / "proj"
    project.mkdir()
    labels = {"devcontainer.local_folder": str(project)}
    assert identity.container_owner(inspect_doc("vsc-proj", labels)) == (ME, "devcontainer_folder")


def test_devcontainer_folder_removed_uses_nearest_existing_parent(tmp_path):
    labels = {"devcontainer.local_folder": str(tmp_path / "gone" / "deeper")}
    assert identity.container_owner(inspect_doc("vsc", labels)) == (ME, "devcontainer_folder")


def test_devcontainer_path_spelling_is_not_trusted(tmp_path):
    """A label naming /home/<someone>/… is charged to whoever owns the folder, not to <someone>."""
    fake_home = tmp_path / "home" / "victim" / "proj"
    fake_home.mkdir(parents=True)
    owner, method = identity.container_owner(inspect_doc("vsc", {"devcontainer.local_folder": str(fake_home)}))
    assert (owner, method) == (ME, "devcontainer_folder") and owner != "victim"


def test_devcontainer_folder_owned_by_an_unknown_uid(tmp_path):
    folder = tmp_path / "orphan"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("chown to an unknown uid needs root")
    os.chown(folder, _unknown_uid(), -1)
    labels = {"devcontainer.local_folder": str(folder)}
    assert identity.container_owner(inspect_doc("vsc", labels)) == (None, "unknown")


@pytest.mark.parametrize("folder", ["relative/path", "/", "/nonexistent-top-level-dir/x", ""])
def test_devcontainer_folder_that_names_nobody(folder):
    assert identity.container_owner(inspect_doc("vsc", {"devcontainer.local_folder": folder})) == (None, "unknown")


def test_labels_win_over_the_name_and_the_folder(tmp_path):
    labels = {"aime.mlc.USER": "bob", "devcontainer.local_folder": str(tmp_path)}
    assert identity.container_owner(inspect_doc(f"x._.{os.getuid()}", labels)) == ("bob", "aime.mlc.USER")


def test_not_a_document():
    assert identity.container_owner(None) == (None, "unknown")


def test_compose_working_dir_owner_comes_from_the_filesystem(tmp_path):
    labels = {"com.docker.compose.project": "stack", "com.docker.compose.project.working_dir": str(tmp_path)}
    assert identity.container_owner(inspect_doc("stack-web-1", labels)) == (ME, "compose_dir")


def test_devcontainer_folder_wins_over_compose_dir(tmp_path):
    labels = {"devcontainer.local_folder": str(tmp_path), "com.docker.compose.project.working_dir": "relative"}
    assert identity.container_owner(inspect_doc("vsc", labels)) == (ME, "devcontainer_folder")
