"""``docker cp`` into a container: the tar stream, rewritten as it passes (entries re-owned to the caller,
no setuid bits, no devices); a classic build's context read the same way; the compressions dockerd would
unpack."""

from __future__ import annotations

import re
from typing import Optional

from .base import Verdict, denied

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
MAX_SPECIAL = 1 << 20  # Go's archive/tar reads PAX and GNU long-name data up to 1 MiB
MAX_PENDING = 4 << 20  # meta headers held back until the entry they describe is checked
HEADER_ONLY = b"123456"  # Go's isHeaderOnlyType: these entries have no data, whatever the size says
DEVICE_TYPES = {b"3": "character device", b"4": "block device", b"6": "FIFO"}
ENTRY_TYPES = (b"0", b"\x00", b"1", b"2", b"5")  # what dockerd's untar extracts
META_TYPES = (b"x", b"g", b"L", b"K")
PAX_KEEP = ("path", "linkpath", "size", "mtime", "atime", "ctime", "comment", "charset", "hdrcharset")
PAX_KEEP_PREFIX = ("SCHILY.xattr.user.",)
_GO_INT = re.compile(rb"[+-]?[0-9]+")


class BodyRefused(Exception):
    """A request body the gateway stopped forwarding; ``verdict`` says why."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict[1])
        self.verdict = verdict


class _Bad(Exception):
    pass


def _cstr(field: bytes) -> bytes:
    end = field.find(b"\x00")
    return field if end < 0 else field[:end]


def _numeric(field: bytes) -> int:
    """Go archive/tar's parseNumeric: base-256 when the high bit is set, else trimmed octal."""
    if field and field[0] & 0x80:
        inv = 0xFF if field[0] & 0x40 else 0
        value = 0
        for i, byte in enumerate(field):
            byte ^= inv
            if i == 0:
                byte &= 0x7F
            if value >> 56:
                raise _Bad("a numeric field overflows")
            value = value << 8 | byte
        if value >> 63:
            raise _Bad("a numeric field overflows")
        return ~value if inv else value
    text = _cstr(field.strip(b" \x00"))
    if not text:
        return 0
    if not re.fullmatch(rb"[0-7]+", text):
        raise _Bad("a numeric field is not octal")
    return int(text, 8)


def _octal(value: int, width: int) -> bytes:
    """A numeric field: octal with a NUL, or base-256 when it does not fit."""
    if 0 <= value < 8 ** (width - 1):
        return b"%0*o\x00" % (width - 1, value)
    return bytes([0x80]) + value.to_bytes(width - 1, "big")


def _checksums(block: bytes) -> tuple:
    data = block[:148] + b" " * 8 + block[156:]
    unsigned = sum(data)
    signed = sum(b - 256 if b > 127 else b for b in data)
    return unsigned, signed


def _seal(header: bytearray) -> bytes:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\x00 " % sum(header)
    return bytes(header)


def _format(block: bytes) -> str:
    magic, version, trailer = block[257:263], block[263:265], block[508:512]
    if magic == b"ustar\x00":
        return "star" if trailer == b"tar\x00" else "ustar"
    if magic == b"ustar " and version == b" \x00":
        return "gnu"
    return "v7"


def _prefix(block: bytes, fmt: str) -> bytes:
    if fmt == "ustar":
        return _cstr(block[345:500])
    if fmt == "star":
        return _cstr(block[345:476])
    if fmt == "gnu":
        # Go reads GNU atime/ctime there; when they do not parse it falls back to a USTAR prefix
        # (archives written by Go before 1.8).
        try:
            for field in (block[345:357], block[357:369]):
                if field[0] != 0:
                    _numeric(field)
        except _Bad:
            text = _cstr(block[345:500])
            if all(c < 0x80 for c in text):
                return text
    return b""


def _pax_records(data: bytes) -> list:
    """Go's parsePAX / parsePAXRecord, strictly: a list of (key, value) bytes, or _Bad."""
    records = []
    rest = data
    while rest:
        space = rest.find(b" ")
        if space < 0 or not _GO_INT.fullmatch(rest[:space]):
            raise _Bad("a PAX record has no length")
        length = int(rest[:space])
        if length < 5 or len(rest) < length or space + 1 >= length - 1:
            raise _Bad("a PAX record has a wrong length")
        record, newline, rest = rest[space + 1 : length - 1], rest[length - 1 : length], rest[length:]
        if newline != b"\n" or b"=" not in record:
            raise _Bad("a PAX record is malformed")
        key, _sep, value = record.partition(b"=")
        if not key or (key in (b"path", b"linkpath", b"uname", b"gname") and b"\x00" in value) or b"\x00" in key:
            raise _Bad("a PAX record has an invalid key or value")
        records.append((key, value))
    return records


def _pax_record(key: bytes, value: bytes) -> bytes:
    size = len(key) + len(value) + 3
    total = size + len(str(size))
    if len(str(total)) != len(str(size)):
        total = size + len(str(total))
    return b"%d %s=%s\n" % (total, key, value)


def _entry_key(name: bytes) -> Optional[str]:
    """Where an entry lands relative to the destination (dockerd: filepath.Join + Clean); None if outside."""
    stack: list = []
    for part in name.decode("utf-8", "surrogateescape").split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not stack:
                return None
            stack.pop()
        else:
            stack.append(part)
    return "/".join(stack)


class ArchiveRewriter:
    """Rewrites a tar stream block by block, as dockerd's Go archive/tar will read it.

    Every entry is re-owned to ``uid:gid`` (uname/gname cleared; PAX uid/gid/uname/gname records
    and every extended attribute outside ``user.*`` dropped, e.g. ``security.capability``), and
    loses its setuid, setgid and sticky bits. Device nodes, FIFOs, sparse files, hard links to a
    path that is not an earlier entry of the same archive, entries outside the destination and
    malformed headers are refused. A refusal replaces everything from the refused entry's first
    header to the end of the body with zeros: to dockerd that is a clean end of archive, so it
    extracts the complete entries before it and nothing else, and never a partial file (aborting
    the upload instead kills dockerd's untar in the middle of whatever it was still writing).

    The output has exactly the input's length (PAX data shrinks inside its own blocks), so a
    Content-Length stays true. ``feed(bytes) → bytes`` per piece, ``end() → bytes`` at the end
    (raises ``BodyRefused`` when the archive was refused); ``filter`` is both, for ``_send_body``,
    which finishes sending the body and then raises, so the client gets the refusal, not dockerd's
    answer to the shortened archive.
    """

    def __init__(self, uid: int, gid: int) -> None:
        self.uid = uid
        self.gid = gid
        self.verdict: Optional[Verdict] = None
        self._buf = bytearray()
        self._out = bytearray()
        self._data_left = 0  # bytes of entry data (with padding) to pass through
        self._meta: Optional[tuple] = None  # (type, header, size, blocks) of the meta entry being read
        self._pending = bytearray()  # rewritten meta entries waiting for their entry
        self._pax: dict = {}
        self._long_name: Optional[bytes] = None
        self._long_link: Optional[bytes] = None
        self._zero = False  # one zero block seen
        self._ended = False
        self._seen: set = set()
        self._total_in = 0
        self._total_out = 0

    # -- public ------------------------------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        self._total_in += len(data)
        if self.verdict is not None:
            self._total_out += len(data)
            return bytes(len(data))
        self._buf += data
        try:
            self._run()
        except _Bad as exc:
            self._refuse(
                denied(f"the archive is not a tar stream dockerd would accept ({exc}); nothing after it was copied.")
            )
        except BodyRefused as exc:
            self._refuse(exc.verdict)
        out, self._out = bytes(self._out), bytearray()
        self._total_out += len(out)
        return out

    def end(self) -> bytes:
        if self.verdict is not None:
            raise BodyRefused(self.verdict)
        out = bytes(self._out) + bytes(self._pending) + bytes(self._buf)
        self._out, self._pending, self._buf = bytearray(), bytearray(), bytearray()
        return out

    def filter(self, piece: Optional[bytes]) -> bytes:
        return self.end() if piece is None else self.feed(piece)

    # -- machinery ---------------------------------------------------------------------------
    def _refuse(self, verdict: Verdict) -> None:
        """From the refused entry's headers on, everything becomes zeros: an end of archive."""
        self.verdict = verdict
        self._buf = bytearray()
        self._pending = bytearray()
        self._out += bytes(self._total_in - self._total_out - len(self._out))

    def _run(self) -> None:
        while True:
            if self._ended:
                self._out += bytes(len(self._buf))  # after the end-of-archive marker: nothing is read
                self._buf = bytearray()
                return
            if self._data_left:
                take = min(self._data_left, len(self._buf))
                if not take:
                    return
                self._on_data(bytes(self._buf[:take]))
                self._out += self._buf[:take]
                del self._buf[:take]
                self._data_left -= take
                continue
            if self._meta is not None:
                kind, header, size, blocks = self._meta
                if len(self._buf) < blocks * BLOCK:
                    return
                data = bytes(self._buf[:size])
                del self._buf[: blocks * BLOCK]
                self._meta = None
                self._finish_meta(kind, header, data, blocks)
                continue
            if len(self._buf) < BLOCK:
                return
            block = bytes(self._buf[:BLOCK])
            del self._buf[:BLOCK]
            self._header(block)

    def _header(self, block: bytes) -> None:
        if block == ZERO_BLOCK:
            self._out += self._pending + block
            self._pending = bytearray()
            self._ended = self._zero
            self._zero = True
            return
        if self._zero:
            raise _Bad("a zero block is followed by data")
        if block[148] & 0x80 or _numeric(block[148:156]) not in _checksums(block):
            raise _Bad("a header checksum is wrong")
        kind = block[156:157]
        fmt = _format(block)
        size = _numeric(block[124:136])
        if kind in META_TYPES:
            if size < 0 or size > MAX_SPECIAL:
                raise _Bad("a PAX or long-name header is larger than 1 MiB")
            self._meta = (kind, block, size, -(-size // BLOCK))
            return
        self._entry(block, kind, fmt, size)

    def _finish_meta(self, kind: bytes, block: bytes, data: bytes, blocks: int) -> None:
        header = bytearray(block)
        if kind in (b"x", b"g"):
            records = _pax_records(data)
            kept = []
            for key, value in records:
                if key.startswith(b"GNU.sparse."):
                    raise BodyRefused(denied("sparse files cannot be copied through the gateway; copy a normal file."))
                text = key.decode("utf-8", "surrogateescape")
                if text in PAX_KEEP or text.startswith(PAX_KEEP_PREFIX):
                    kept.append((key, value))
            data = b"".join(_pax_record(k, v) for k, v in kept)
            header[124:136] = _octal(len(data), 12)
            if kind == b"x":
                self._pax = dict(kept)  # Go: the last PAX header before an entry is the one that counts
            else:
                # Go returns a global header as an entry of its own (dockerd ignores it) and forgets
                # what came before it.
                self._pax, self._long_name, self._long_link = {}, None, None
        elif kind == b"L":
            self._long_name = _cstr(data)
        else:
            self._long_link = _cstr(data)
        self._own(header)
        entry = _seal(header) + data + bytes(blocks * BLOCK - len(data))
        self._pending += entry
        if len(self._pending) > MAX_PENDING:
            raise _Bad("too many PAX or long-name headers in a row")
        if kind == b"g":
            self._out += self._pending
            self._pending = bytearray()

    def _entry(self, block: bytes, kind: bytes, fmt: str, size: int) -> None:
        name = _cstr(block[0:100])
        prefix = _prefix(block, fmt)
        if prefix:
            name = prefix + b"/" + name
        link = _cstr(block[157:257])
        pax, self._pax = self._pax, {}
        long_name, long_link = self._long_name, self._long_link
        self._long_name = self._long_link = None
        if pax.get(b"path"):
            name = pax[b"path"]
        if pax.get(b"linkpath"):
            link = pax[b"linkpath"]
        if pax.get(b"size"):
            if not _GO_INT.fullmatch(pax[b"size"]):
                raise _Bad("a PAX size is not a number")
            size = int(pax[b"size"])
        if long_name:
            name = long_name
        if long_link:
            link = long_link
        if kind == b"\x00" and name.endswith(b"/"):
            kind = b"5"  # Go: legacy archives mark directories with a trailing slash
        shown = name.decode("utf-8", "replace")
        if kind in DEVICE_TYPES:
            raise BodyRefused(
                denied(
                    f"the archive holds a {DEVICE_TYPES[kind]} ({shown}); device nodes and FIFOs cannot be copied "
                    "into containers. Nothing from that entry on was copied."
                )
            )
        if kind not in ENTRY_TYPES:
            raise BodyRefused(
                denied(
                    f"the archive entry {shown} has type {kind.decode('latin-1')!r}, which docker cp does not copy; "
                    "copy regular files, directories and links only."
                )
            )
        key = _entry_key(name)
        if key is None:
            raise BodyRefused(denied(f"the archive entry {shown} points outside the destination; remove it."))
        if kind == b"1":
            target = _entry_key(link)
            if target is None or target not in self._seen:
                raise BodyRefused(
                    denied(
                        f"the archive entry {shown} is a hard link to {link.decode('utf-8', 'replace')}, which is not "
                        "an earlier entry of the same archive; hard links may only point to files copied with them."
                    )
                )
        self._seen.add(key)
        if kind in HEADER_ONLY:
            size = 0
        if size < 0:
            raise _Bad("an entry has a negative size")
        header = bytearray(block)
        self._own(header)
        mode = _numeric(block[100:108])
        if mode < 0:
            raise _Bad("an entry has a negative mode")
        header[100:108] = _octal(mode & ~0o7000, 8)
        self._out += self._pending + _seal(header)
        self._pending = bytearray()
        self._data_left = -(-size // BLOCK) * BLOCK
        self._on_entry(key, kind, size)

    # -- hooks (BuildContextReader) ----------------------------------------------------------
    def _on_entry(self, key: str, kind: bytes, size: int) -> None:
        """An entry's header was read; its data (padded) follows."""

    def _on_data(self, data: bytes) -> None:
        """A piece of the current entry's data (with its padding) passed through."""

    def _own(self, header: bytearray) -> None:
        header[108:116] = _octal(self.uid, 8)
        header[116:124] = _octal(self.gid, 8)
        header[265:329] = bytes(64)


# The formats dockerd's archive.DecompressStream recognises by their first bytes.
COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}


def compression_of(data: bytes) -> Optional[str]:
    """The compression a tar stream starting with ``data`` uses, as the daemon would detect it, or None."""
    for magic, name in COMPRESSED.items():
        if data.startswith(magic):
            return name
    return None


class BuildContextReader(ArchiveRewriter):
    """A build context (tar) as it is spooled: rewritten like a ``docker cp`` archive, and the
    Dockerfile the classic builder will read kept aside for ``dockerfile.check``."""

    MAX_DOCKERFILE = 1024 * 1024

    def __init__(self, uid: int, gid: int, dockerfile: str = "") -> None:
        super().__init__(uid, gid)
        names = {"Dockerfile", "dockerfile"}  # dockerd falls back to the lower-case name
        wanted = _entry_key((dockerfile or "Dockerfile").encode())
        if wanted:
            names.add(wanted)
        self.names = names
        self.dockerfiles: dict = {}  # key -> text (the last entry of a name wins, as on extraction)
        self.links: set = set()  # keys of symlinks and hard links in the context
        self._capture: Optional[bytearray] = None
        self._capture_key = ""
        self._capture_size = 0

    COMPRESSED = COMPRESSED

    def feed(self, data: bytes) -> bytes:
        if self._total_in == 0:
            name = compression_of(data)
            if name:
                self._refuse(
                    denied(
                        f"the build context is {name}-compressed; the ds01 gateway reads the Dockerfile out of "
                        "it, so send it as a plain tar (leave out --compress, or `tar c` instead of `tar cz`)."
                    )
                )
        return super().feed(data)

    def end(self) -> bytes:
        if self.verdict is None and (self._buf or not self._zero) and self._total_in:
            # a partial block (a body shorter than a tar header) or no end-of-archive: not a tar the
            # gateway could read, whatever the daemon would make of it
            self._refuse(denied("the build context is not a complete tar archive; send a plain tar."))
        if self.verdict is None:
            for key in self.names:
                parts = key.split("/")
                for i in range(1, len(parts) + 1):
                    if "/".join(parts[:i]) in self.links:
                        self._refuse(
                            denied(
                                f"the Dockerfile path {key} goes through a link in the build context; name the "
                                "Dockerfile itself."
                            )
                        )
        return super().end()

    def _on_entry(self, key: str, kind: bytes, size: int) -> None:
        self._finish_capture()
        if kind in (b"1", b"2"):
            self.links.add(key)
        if key not in self.names:
            return
        if kind not in (b"0", b"\x00", b"7"):
            raise BodyRefused(
                denied(f"the build context's {key} is not a regular file (a link?); send the Dockerfile itself.")
            )
        if size > self.MAX_DOCKERFILE:
            raise BodyRefused(denied(f"the build context's {key} is larger than 1 MiB; a Dockerfile is smaller."))
        self._capture, self._capture_key, self._capture_size = bytearray(), key, size
        if size == 0:
            self._finish_capture()

    def _on_data(self, data: bytes) -> None:
        if self._capture is None:
            return
        self._capture += data
        if len(self._capture) >= self._capture_size:
            self._finish_capture()

    def _finish_capture(self) -> None:
        if self._capture is not None:
            text = bytes(self._capture[: self._capture_size]).decode("utf-8", "replace")
            self.dockerfiles[self._capture_key] = text
            self._capture = None
