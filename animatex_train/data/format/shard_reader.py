"""Sequential, safe reading of WebDataset tar shards: members are grouped into samples, never extracted.

Only plain-file members are read, into memory; their names are never used as paths. Nothing is decoded
here: ``schema.decode_clip`` later decodes only the schema's members with non-pickle decoders, so a
``.pyd``/``.pickle``/``.pth`` member in a shard is carried as bytes and dropped.

URLs: local paths (and ``file:``) always; ``pipe:`` and remote URLs go through ``webdataset.gopen``,
which runs shell commands / curl, so they must be allowed explicitly (``allow_remote_urls``) and the
shard list must come from a trusted manifest (docs/reliability.md §3.2).
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import IO

_SAMPLE_MEMBER = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # WebDataset's rule: key = up to the first dot


class ShardReadError(OSError):
    """A shard could not be opened or read to the end; the message names the shard."""


def open_shard(url: str, allow_remote_urls: bool = False) -> IO[bytes]:
    """Open a shard for sequential reading."""
    if url.startswith("file:"):
        url = url[len("file:") :]
    if re.match(r"^[a-z][a-z0-9+.-]*:", url) and not re.match(r"^[A-Za-z]:[\\/]", url):
        if not allow_remote_urls:
            raise ShardReadError(
                f"shard URL {url!r} needs a shell command or network client; set data.allow_remote_urls: true "
                "if the manifest is trusted (pipe: URLs run shell commands)"
            )
        # local import: only remote datasets need it. `webdataset.gopen` the attribute is the function (the package
        # re-exports it over its submodule's name), so import it from the submodule.
        from webdataset import utils as wds_utils
        from webdataset.gopen import gopen

        # data.allow_remote_urls is the explicit opt-in for this URL; WDS_SECURE=1 (set by our scripts and tests)
        # keeps guarding every other webdataset entry point, so lift it for this one open only.
        secure, wds_utils.enforce_security = wds_utils.enforce_security, False
        try:
            return gopen(url, "rb")
        finally:
            wds_utils.enforce_security = secure
    try:
        return Path(url).open("rb")
    except OSError as error:
        raise ShardReadError(f"cannot open shard {url!r}: {error}") from error


def iter_samples(
    url: str, allow_remote_urls: bool = False, only: Collection[str] | None = None
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {member: bytes})`` in tar order; with ``only``, just those members (others are not read).

    Raises:
        ShardReadError: the shard cannot be opened, or is corrupt or truncated (raised when reached,
            after every complete sample before the damage was yielded).
    """
    stream = open_shard(url, allow_remote_urls)
    try:
        current_key: str | None = None
        members: dict[str, bytes] = {}
        try:
            # A local file is read in tarfile's seekable mode, still front to back: each member is then one
            # read() of its bytes, where stream mode ("r|", kept for pipes and sockets) re-joins and re-slices
            # its read buffer per member, about 8x the CPU time for our ~3 MiB samples.
            mode = "r:*" if getattr(stream, "seekable", lambda: False)() else "r|*"  # webdataset's Pipe: no seekable()
            with tarfile.open(fileobj=stream, mode=mode) as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    match = _SAMPLE_MEMBER.match(info.name)
                    if match is None:
                        continue
                    key, member = match.group(1), match.group(2)
                    if only is not None and member not in only:
                        continue
                    data = tar.extractfile(info).read()
                    if len(data) != info.size:
                        raise ShardReadError(f"shard {url!r} is truncated inside member {info.name!r}")
                    if key != current_key:
                        if current_key is not None:
                            yield current_key, members
                        current_key, members = key, {}
                    members[member] = data
        except (tarfile.TarError, EOFError, OSError) as error:
            if isinstance(error, ShardReadError):
                raise
            raise ShardReadError(
                f"shard {url!r} is corrupt or truncated after sample {current_key!r}: {error}"
            ) from error
        # The last sample is complete only if the tar ended cleanly (the loop above raised otherwise).
        if current_key is not None:
            yield current_key, members
    finally:
        stream.close()
