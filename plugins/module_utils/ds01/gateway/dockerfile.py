"""What a Dockerfile makes the daemon fetch, checked before the classic builder runs it.

The classic builder (``POST /build`` with the context as a tar body) runs as root in dockerd, on
the host: ``ADD <url>`` downloads from wherever the URL points (other users' notebooks on the
host's loopback), and ``FROM``/``COPY --from`` pull from whichever registry the image name names.
So for users the gateway reads the Dockerfile out of the context as it streams past
(``BuildContextFilter``) and refuses, with a sentence naming the line:

- ``ADD`` with a URL, a git address or a variable in a source (a variable could hold a URL);
- ``FROM`` / ``COPY --from`` / ``RUN --mount=from=`` images on a registry that is this host or
  a private address (an IP literal or ``localhost``; names are left to the daemon's resolver);
- ``LABEL`` with a label only the server sets (``identity.reserved_label``: its stamps and the owner
  labels) or a name made from a variable: a build's step containers inherit the image's labels
  without passing the gateway, so such a label would make them somebody's (round-6 attack);
- the same inside ``ONBUILD``, and in ``docker commit``/``docker import --change`` lines.

BuildKit builds are refused for users altogether (objects.py): their Dockerfile travels inside the
BuildKit session, where the gateway cannot read it, and their steps run outside the user's slice.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Optional

from .. import identity

_DIRECTIVE = re.compile(r"#\s*([A-Za-z]+)\s*=\s*(\S+)\s*")
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?:[:][-+?][^}]*)?\}|([A-Za-z_][A-Za-z0-9_]*))")


class DockerfileRefused(Exception):
    def __init__(self, sentence: str) -> None:
        super().__init__(sentence)
        self.sentence = sentence


def instructions(text: str) -> list:
    """(line number, INSTRUCTION, rest) for every instruction, as moby's parser joins them.

    A line ending in the escape character (optionally followed by blanks) continues on the next
    line, which is appended as it is (no separator: ``AD\\`` then ``D url`` is ``ADD url``);
    comment and empty lines inside a continuation are skipped; the keyword is split off at any
    whitespace (tab, vertical tab, form feed)."""
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]  # moby: \n only
    escape = "\\"
    for line in lines:  # parser directives come first, before any instruction or comment
        match = _DIRECTIVE.fullmatch(line.strip())
        if not match:
            break
        if match.group(1).lower() == "escape" and match.group(2) in ("\\", "`"):
            escape = match.group(2)
    continued = re.compile(re.escape(escape) + r"[ \t]*$")
    out: list = []
    buffer: Optional[str] = None
    start = 0
    for number, raw in enumerate(lines, 1):
        if buffer is None:
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            start, buffer = number, ""
        elif not raw.strip() or raw.lstrip().startswith("#"):
            continue
        match = continued.search(raw)
        if match:
            buffer += raw[: match.start()]
            continue
        out.append(_split(start, buffer + raw))
        buffer = None
    if buffer:
        out.append(_split(start, buffer))
    return out


def _split(number: int, text: str) -> tuple:
    parts = re.split(r"\s+", text.strip(), maxsplit=1)
    return number, parts[0].upper(), (parts[1] if len(parts) > 1 else "").strip()


def _words(rest: str) -> list:
    """The arguments of an instruction: its JSON form or its words."""
    text = rest.strip()
    if text.startswith("["):
        try:
            value = json.loads(text)
            if isinstance(value, list):
                return [str(v) for v in value]
        except ValueError:
            pass
    return text.split()  # any whitespace, as moby splits arguments


def _shell_words(text: str) -> list:
    """Words split at unquoted blanks, quotes and escapes kept (moby's parseWords, for LABEL/ENV)."""
    words: list = []
    word, quote, i = "", "", 0
    while i < len(text):
        char = text[i]
        if char == "\\" and quote != "'" and i + 1 < len(text):
            word += text[i : i + 2]
            i += 2
            continue
        if quote:
            if char == quote:
                quote = ""
        elif char in ("'", '"'):
            quote = char
        elif char.isspace():
            if word:
                words.append(word)
            word = ""
            i += 1
            continue
        word += char
        i += 1
    if word:
        words.append(word)
    return words


def _label_keys(rest: str) -> list:
    """The (raw) label names of a LABEL instruction: ``k=v k2="v 2"``, or the old ``LABEL key value``."""
    words = _shell_words(rest)
    if not words:
        return []
    if "=" not in words[0]:
        return [words[0]]
    return [w.split("=", 1)[0] for w in words]


def _flags(words: list) -> tuple:
    flags = [w for w in words if w.startswith("--")]
    return flags, [w for w in words if not w.startswith("--")]


def private_registry(reference: str) -> Optional[str]:
    """The registry part of an image reference when it is this host or a private address."""
    slash = reference.find("/")
    head = reference[:slash] if slash > 0 else ""
    if not head or not (any(c in head for c in ".:") or head == "localhost"):
        return None
    host = head[1:].split("]", 1)[0] if head.startswith("[") else head.rsplit(":", 1)[0]
    if host.lower() == "localhost" or host.lower().endswith(".localhost"):
        return head
    try:
        return None if ipaddress.ip_address(host).is_global else head
    except ValueError:
        return None  # a name: the daemon resolves it (the gateway refuses pulls from private ones)


def _expand(value: str, args: dict) -> Optional[str]:
    """``$X``/``${X}`` from the known ARG values; None when one is unknown."""
    unknown = []

    def one(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in args:
            unknown.append(name)
            return ""
        return args[name]

    out = _VARIABLE.sub(one, value)
    return None if unknown else out


def check(text: str, build_args: Optional[dict] = None, where: str = "Dockerfile") -> list:
    """Raise DockerfileRefused for the first instruction that would make the daemon fetch from the
    host or a private network; else the images it builds from (FROM, COPY --from), as the daemon
    will read their names, for the caller to check their ONBUILD triggers."""
    if text.startswith("\ufeff"):
        text = text[1:]  # the daemon drops a UTF-8 byte-order mark before it parses
    args = dict(build_args or {})
    stages: set = set()
    images: list = []
    for number, word, rest in instructions(text):
        _check_one(number, word, rest, args, stages, where, images)
    return images


def unquote(word: str) -> str:
    """A word as the builder's shell lexer reads it: quotes removed, backslash escapes resolved."""
    out, quote, i = [], "", 0
    while i < len(word):
        char = word[i]
        if char == "\\" and quote != "'" and i + 1 < len(word):
            out.append(word[i + 1])
            i += 2
            continue
        if char in ("'", '"') and (not quote or quote == char):
            quote = "" if quote else char
        else:
            out.append(char)
        i += 1
    return "".join(out)


def _check_one(number: int, word: str, rest: str, args: dict, stages: set, where: str, images: list) -> None:
    at = f"{where} line {number}"
    if word == "ONBUILD":
        inner, _sep, inner_rest = rest.partition(" ")
        _check_one(number, inner.upper(), inner_rest.strip(), args, stages, f"{where} (ONBUILD)", images)
        return
    if word == "ARG":
        for item in _words(rest):
            name, sep, default = item.partition("=")
            if name not in args and sep:
                args[name] = default.strip("\"'")
        return
    if word == "FROM":
        words = _flags(_words(rest))[1]
        if words and unquote(words[0]).lower() not in stages and unquote(words[0]) != "scratch":
            images.append(_check_image(words[0], args, at, "FROM"))
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2].lower())
        stages.add(str(len(stages)))
        return
    if word in ("COPY", "RUN"):
        for flag in _flags(_words(rest))[0]:
            name, _sep, value = flag[2:].partition("=")
            if word == "COPY" and name == "from" and unquote(value).lower() not in stages:
                images.append(_check_image(value, args, at, "COPY --from"))
            if word == "RUN" and name == "mount":
                for part in value.split(","):
                    key, _sep2, ref = part.partition("=")
                    if key == "from" and unquote(ref).lower() not in stages:
                        images.append(_check_image(ref, args, at, "RUN --mount from"))
        return
    if word == "LABEL":
        for key in _label_keys(rest):
            if "$" in key:
                raise DockerfileRefused(
                    f"{at}: LABEL {key}=... makes a label's name from a variable; write the name out, so it can be "
                    "checked (ds01.user, ds01.gpu.* and the other ownership labels are the server's)."
                )
            name = unquote(key)
            if identity.reserved_label(name):
                raise DockerfileRefused(
                    f"{at}: LABEL {name} is a label only the server sets: it says who owns a container or what it "
                    "holds, and the containers a build makes from this image would inherit it. Remove it."
                )
        return
    if word == "ADD":
        words = _flags(_words(rest))[1]
        for source in words[:-1]:
            if "://" in source or source.startswith("git@") or "$" in source:
                raise DockerfileRefused(
                    f"{at}: ADD {source} makes the Docker daemon fetch it as root from the host, where other "
                    "users' services listen, and is not available to users; download the file yourself, put it "
                    "in the build context and COPY it."
                )


def _check_image(reference: str, args: dict, at: str, what: str) -> str:
    expanded = _expand(reference, args) if "$" in reference else reference
    expanded = None if expanded is None else unquote(expanded)
    if expanded is None:
        raise DockerfileRefused(
            f"{at}: {what} {reference} uses a build argument without a default; give the ARG a default or pass "
            "--build-arg, so the image it names can be checked."
        )
    registry = private_registry(expanded)
    if registry:
        raise DockerfileRefused(
            f"{at}: {what} {expanded} would make the Docker daemon pull from {registry}, which is this host or a "
            "private address; use an image from a public registry or one already on this server."
        )
    return expanded


def check_changes(changes: list, what: str) -> None:
    """``docker commit --change`` / ``docker import --change`` lines, and ``OnBuild`` triggers in a
    container's or an image's config, are Dockerfile instructions too."""
    check("\n".join(str(c) for c in changes), where=what)
