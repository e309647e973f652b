# Copyright (c) ds01.infra contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Installing a rendered file from an Ansible module: the one temp-file → validate → atomic_move path.

Shared by the ds01.infra modules (not part of the ansible-free runtime core in ``ds01/``).
"""

from __future__ import annotations

import os
import tempfile

from ansible.module_utils.common.text.converters import to_bytes


def install_content(module, path, text, validate=None, dir_mode=0o755):
    """Write ``text`` to ``path`` atomically, after ``validate(temp_path)`` accepted it.

    The temp file sits beside ``path`` so the rename is atomic; in check mode it goes to the
    module's own temp directory and is only validated (a bad render fails check mode too).
    ``validate`` reports a rejection itself (``module.fail_json``). The temp file never remains.
    """
    directory = module.tmpdir if module.check_mode else os.path.dirname(path)
    if not module.check_mode and not os.path.isdir(directory):
        os.makedirs(directory, dir_mode)
    fd, tmp = tempfile.mkstemp(prefix=".ds01-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(to_bytes(text, errors="surrogateescape"))
        if validate is not None:
            validate(tmp)
        if not module.check_mode:
            module.atomic_move(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
