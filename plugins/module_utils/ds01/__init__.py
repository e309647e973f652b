"""ds01 runtime core: plain Python shared by the Ansible modules and the host's runtime units.

No ``ansible`` import anywhere in this package: it is copied onto the host as the package
``ds01`` and run there by systemd units and the ``ds01`` command.
"""

from __future__ import annotations

__version__ = "0.1.0"
