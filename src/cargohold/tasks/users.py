"""The process user of a container: ``USER[:GROUP]`` resolved in the image's own files.

``resolve(text, root)`` follows containerd (``oci.WithUser``, ``WithAdditionalGIDs``):

- ``""`` is root: uid 0, gid 0;
- a number is that uid; its gid comes from the image's ``/etc/passwd`` when the uid is listed
  there, else 0;
- a name must be in ``/etc/passwd`` (NotFound otherwise, naming the file);
- ``:GROUP`` overrides the gid: a number, or a name that must be in ``/etc/group``;
- the additional gids are the groups of ``/etc/group`` that list the user's name as a member
  (none for a uid the image does not know).

Files are read inside ``root`` (the mounted rootfs): a symlinked ``/etc/passwd`` is followed
within the root, never out of it. A missing file is an empty one.
"""

from __future__ import annotations

import os
import stat

from cargohold._record import field, record
from cargohold.errors import InvalidArgument, NotFound

_MAX_LINKS = 40


@record(frozen=True)
class User:
    """What goes into the spec's ``process.user``."""

    uid: int
    gid: int
    additional_gids: list[int] = field(default_factory=list)
    name: str = ""

    def to_spec(self) -> dict[str, object]:
        out: dict[str, object] = {"uid": self.uid, "gid": self.gid}
        if self.additional_gids:
            out["additionalGids"] = self.additional_gids
        return out


def needs_lookup(text: str) -> bool:
    """Whether resolving ``text`` reads the image's files (anything but ``""``, ``UID:GID``)."""
    if not text:
        return False
    user, _, group = text.partition(":")
    return not (user.isdigit() and group.isdigit())


def resolve(text: str, root: str | None) -> User:
    """Resolve ``USER[:GROUP]``; ``root`` is the rootfs to read (None: no files to read)."""
    if not text:
        return User(0, 0, name="root")
    user, sep, group = text.partition(":")
    if not user or (sep and not group):
        raise InvalidArgument(f"user {text!r}: not USER[:GROUP]",
                              hint="write it as a name or uid, optionally ':' and a group "
                                   "name or gid")
    passwd = _entries(root, "etc/passwd")
    groups = _entries(root, "etc/group")
    name = ""
    if user.isdigit():
        uid, gid = int(user), 0
        for e in passwd:
            if len(e) > 3 and e[2] == user and e[3].isdigit():
                name, gid = e[0], int(e[3])
                break
    else:
        for e in passwd:
            if e[0] == user and len(e) > 3 and e[2].isdigit() and e[3].isdigit():
                name, uid, gid = user, int(e[2]), int(e[3])
                break
        else:
            raise NotFound(f"user {user}: not in the image's /etc/passwd",
                           hint="give a numeric uid instead (--user UID[:GID])")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            for e in groups:
                if e[0] == group and len(e) > 2 and e[2].isdigit():
                    gid = int(e[2])
                    break
            else:
                raise NotFound(f"group {group}: not in the image's /etc/group",
                               hint="give a numeric gid instead (--user USER:GID)")
    extra: list[int] = []
    if name:
        for e in groups:
            if len(e) > 3 and e[2].isdigit() and name in e[3].split(","):
                g = int(e[2])
                if g != gid and g not in extra:
                    extra.append(g)
    return User(uid, gid, extra, name)


def _entries(root: str | None, rel: str) -> list[list[str]]:
    if root is None:
        return []
    text = read_in_root(root, rel)
    if text is None:
        return []
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line.split(":"))
    return out


def read_in_root(root: str, rel: str, limit: int = 1 << 20) -> str | None:
    """The text of ``rel`` inside ``root``, resolving symlinks as if ``root`` were ``/``;
    None when it is missing or not a regular file.
    """
    parts = [p for p in rel.split("/") if p not in ("", ".")][::-1]
    cur: list[str] = []
    links = 0
    while parts:
        c = parts.pop()
        if c == "..":
            if cur:
                cur.pop()
            continue
        path = os.path.join(root, *cur, c)
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > _MAX_LINKS:
                return None
            target = os.readlink(path)
            if target.startswith("/"):
                cur = []
            parts.extend([p for p in target.split("/") if p not in ("", ".")][::-1])
            continue
        cur.append(c)
    path = os.path.join(root, *cur)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, limit).decode("utf-8", errors="replace")
    finally:
        os.close(fd)
