"""Extracting data archives that may come from elsewhere: nothing lands outside the destination.

`safe_extract(tar_path, dest)` checks every member before writing anything and refuses the archive when one
has an absolute name, a `..` that leaves `dest`, a symbolic or hard link whose target resolves outside `dest`,
or is a device / FIFO file. The extraction itself then runs with tarfile's `filter='data'` (Python 3.11.4+),
which enforces the same rules again and drops set-uid bits and ownership.
"""

from __future__ import annotations

import os
import posixpath
import tarfile


class UnsafeArchiveError(ValueError):
    pass


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([root, path]) == root


def check_member(member: tarfile.TarInfo, dest: str) -> None:
    """Raise UnsafeArchiveError naming the member when extracting it could write or point outside `dest`."""
    name = member.name
    if name.startswith(("/", "\\")) or os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"archive member {name!r}: absolute path")
    target = os.path.realpath(os.path.join(dest, name))
    if not _inside(target, dest):
        raise UnsafeArchiveError(f"archive member {name!r}: resolves to {target!r}, outside {dest!r}")
    if member.isdev() or member.isfifo():
        raise UnsafeArchiveError(f"archive member {name!r}: device or FIFO file")
    if member.issym():
        link = member.linkname
        base = os.path.dirname(target)
        resolved = os.path.realpath(os.path.join(base, link))
        if os.path.isabs(link) or not _inside(resolved, dest):
            raise UnsafeArchiveError(f"archive member {name!r}: symlink to {link!r} points outside {dest!r}")
    elif member.islnk():
        resolved = os.path.realpath(os.path.join(dest, posixpath.normpath(member.linkname)))
        if os.path.isabs(member.linkname) or not _inside(resolved, dest):
            raise UnsafeArchiveError(f"archive member {name!r}: hard link to {member.linkname!r} outside {dest!r}")
    elif not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"archive member {name!r}: unsupported member type {member.type!r}")


def safe_extract(tar_path: str, dest: str) -> list[str]:
    """Extract `tar_path` (any compression tarfile reads) into `dest`; returns the member names.

    All members are checked first, so a refused archive writes nothing.
    """
    dest = os.path.realpath(dest)
    os.makedirs(dest, exist_ok=True)
    with tarfile.open(tar_path) as tar:
        members = tar.getmembers()
        for member in members:
            check_member(member, dest)
        tar.extractall(dest, members=members, filter="data")
    return [m.name for m in members]
