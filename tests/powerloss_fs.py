"""A FUSE file system that loses, on command, everything not yet synced: a power cut.

Test-only (CI mounts it as root; ``/dev/fuse`` and Debian's ``libfuse3-3`` are needed).
Everything lives in this process's memory, in two versions:

- what programs see now (the page cache of a real disk);
- what would survive a power cut: a file's bytes as of its last ``fsync``/``fdatasync``,
  and a directory's entries (creations, renames, links, removals) as of its last
  ``fsync`` of the directory itself. A file that was synced but whose name never was is
  gone after a cut; a name that was synced with a file never synced is an empty file
  (what ext4 shows after a crash of a program that renamed without syncing).

That is POSIX's promise and no more: it is stricter than most real disks (ext4's ordered
mode often saves more), which is what a test of durability wants.

Run as a process; it reads commands on standard input, one a line, and answers each on
standard output:

    python -m tests.powerloss_fs MOUNTPOINT
    -> "mounted"                 once the mount is ready (again after each remount)
    cut     -> "cut N"           drop what was not synced (N: bytes lost)
    sync    -> "synced"          everything as it is now survives (a clean shutdown)
    stats   -> "stats JSON"      counters: fsyncs, bytes written, bytes dropped
    remount -> (unmounts; "mounted" again): the kernel's caches go with the old mount

The test kills every program using the mount before ``cut`` (a power cut stops them all at
once); ``remount`` is the reboot.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import mfusepy as fuse


@dataclass
class Inode:
    ino: int
    mode: int
    data: bytearray = field(default_factory=bytearray)
    durable: bytes = b""
    entries: dict[str, int] = field(default_factory=dict)
    durable_entries: dict[str, int] = field(default_factory=dict)
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    mtime_ns: int = field(default_factory=time.time_ns)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


class PowerLossFS(fuse.Operations):
    use_ns = True

    def __init__(self) -> None:
        self._mutex = threading.RLock()
        self.inodes: dict[int, Inode] = {1: Inode(1, stat.S_IFDIR | 0o755, nlink=2)}
        self.next_ino = 2
        self.handles: dict[int, int] = {}  # fh -> ino (open files keep unlinked inodes)
        self.next_fh = 1
        self.counters = {"fsync": 0, "fsyncdir": 0, "written": 0, "dropped": 0, "cuts": 0}

    # -- the two versions ---------------------------------------------------------------

    def sync_all(self) -> None:
        with self._mutex:
            for node in self.inodes.values():
                if node.is_dir:
                    node.durable_entries = dict(node.entries)
                else:
                    node.durable = bytes(node.data)

    def cut(self) -> int:
        """The power goes: every directory and file as last synced; what hangs off no
        synced directory is gone."""
        with self._mutex:
            lost = 0
            for node in self.inodes.values():
                if node.is_dir:
                    node.entries = dict(node.durable_entries)
                else:
                    if bytes(node.data) != node.durable:
                        lost += max(len(node.data), 1)
                    node.data = bytearray(node.durable)
            reachable = {1}
            todo = [1]
            links: dict[int, int] = {}
            while todo:
                for ino in self.inodes[todo.pop()].entries.values():
                    links[ino] = links.get(ino, 0) + 1
                    if ino not in reachable:
                        reachable.add(ino)
                        if self.inodes[ino].is_dir:
                            todo.append(ino)
            for ino in list(self.inodes):
                if ino not in reachable:
                    del self.inodes[ino]
                elif not self.inodes[ino].is_dir:
                    self.inodes[ino].nlink = links.get(ino, 1)
            self.handles.clear()
            self.counters["dropped"] += lost
            self.counters["cuts"] += 1
            return lost

    # -- paths --------------------------------------------------------------------------

    def _lookup(self, path: str) -> Inode:
        node = self.inodes[1]
        for part in [p for p in path.split("/") if p]:
            if not node.is_dir:
                raise fuse.FuseOSError(errno.ENOTDIR)
            ino = node.entries.get(part)
            if ino is None:
                raise fuse.FuseOSError(errno.ENOENT)
            node = self.inodes[ino]
        return node

    def _parent(self, path: str) -> tuple[Inode, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        parent = self._lookup(head or "/")
        if not parent.is_dir:
            raise fuse.FuseOSError(errno.ENOTDIR)
        return parent, name

    def _new(self, mode: int) -> Inode:
        node = Inode(self.next_ino, mode, uid=os.getuid(), gid=os.getgid())
        self.inodes[node.ino] = node
        self.next_ino += 1
        return node

    def _node(self, path: str | None, fh: int | None) -> Inode:
        if fh is not None and fh in self.handles:
            return self.inodes[self.handles[fh]]
        if path is None:
            raise fuse.FuseOSError(errno.EBADF)
        return self._lookup(path)

    def _drop_if_unused(self, node: Inode) -> None:
        if node.nlink <= 0 and node.ino not in self.handles.values() and not self._durably_named(
                node.ino):
            self.inodes.pop(node.ino, None)

    def _durably_named(self, ino: int) -> bool:
        return any(ino in n.durable_entries.values() for n in self.inodes.values() if n.is_dir)

    # -- metadata -----------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self._mutex:
            node = self._node(path, fh)
            size = len(node.data) if not node.is_dir else 4096
            return {"st_mode": node.mode, "st_nlink": node.nlink, "st_size": size,
                    "st_uid": node.uid, "st_gid": node.gid, "st_ino": node.ino,
                    "st_blocks": (size + 511) // 512, "st_blksize": 4096,
                    "st_atime": node.mtime_ns, "st_mtime": node.mtime_ns,
                    "st_ctime": node.mtime_ns}

    def readdir(self, path: str, fh: int) -> list[str]:
        with self._mutex:
            return [".", "..", *self._lookup(path).entries]

    def statfs(self, path: str) -> dict[str, int]:
        with self._mutex:
            used = sum(len(n.data) for n in self.inodes.values()) // 4096
        total = 1 << 20  # 4 GiB of 4 KiB blocks
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": total,
                "f_bfree": total - used, "f_bavail": total - used, "f_files": 1 << 20,
                "f_ffree": (1 << 20) - len(self.inodes), "f_namemax": 255}

    def chmod(self, path: str, mode: int) -> int:
        with self._mutex:
            node = self._lookup(path)
            node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        with self._mutex:
            node = self._lookup(path)
            if uid != -1 and uid != 0xFFFFFFFF:
                node.uid = uid
            if gid != -1 and gid != 0xFFFFFFFF:
                node.gid = gid
        return 0

    def utimens(self, path: str, times: Any = None) -> int:
        with self._mutex:
            self._lookup(path).mtime_ns = time.time_ns()
        return 0

    def access(self, path: str, amode: int) -> int:
        with self._mutex:
            self._lookup(path)
        return 0

    # -- names --------------------------------------------------------------------------

    def mkdir(self, path: str, mode: int) -> int:
        with self._mutex:
            parent, name = self._parent(path)
            if name in parent.entries:
                raise fuse.FuseOSError(errno.EEXIST)
            node = self._new(stat.S_IFDIR | (mode & 0o7777))
            node.nlink = 2
            parent.entries[name] = node.ino
        return 0

    def rmdir(self, path: str) -> int:
        with self._mutex:
            parent, name = self._parent(path)
            node = self._lookup(path)
            if node.entries:
                raise fuse.FuseOSError(errno.ENOTEMPTY)
            del parent.entries[name]
        return 0

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        with self._mutex:
            parent, name = self._parent(path)
            if name in parent.entries:
                node = self.inodes[parent.entries[name]]
            else:
                node = self._new(stat.S_IFREG | (mode & 0o7777))
                parent.entries[name] = node.ino
            return self._open_handle(node)

    def _open_handle(self, node: Inode) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = node.ino
        return fh

    def open(self, path: str, flags: int) -> int:
        with self._mutex:
            node = self._lookup(path)
            if flags & os.O_TRUNC:
                node.data = bytearray()
            return self._open_handle(node)

    def opendir(self, path: str) -> int:
        with self._mutex:
            self._lookup(path)
        return 0

    def release(self, path: str, fh: int) -> int:
        with self._mutex:
            ino = self.handles.pop(fh, None)
            if ino is not None and ino in self.inodes:
                self._drop_if_unused(self.inodes[ino])
        return 0

    def unlink(self, path: str) -> int:
        with self._mutex:
            parent, name = self._parent(path)
            ino = parent.entries.pop(name, None)
            if ino is None:
                raise fuse.FuseOSError(errno.ENOENT)
            node = self.inodes[ino]
            node.nlink -= 1
            self._drop_if_unused(node)
        return 0

    def rename(self, old: str, new: str) -> int:
        with self._mutex:
            src_parent, src_name = self._parent(old)
            dst_parent, dst_name = self._parent(new)
            ino = src_parent.entries.get(src_name)
            if ino is None:
                raise fuse.FuseOSError(errno.ENOENT)
            replaced = dst_parent.entries.get(dst_name)
            del src_parent.entries[src_name]
            dst_parent.entries[dst_name] = ino
            if replaced is not None and replaced != ino:
                node = self.inodes[replaced]
                node.nlink -= 1
                self._drop_if_unused(node)
        return 0

    def link(self, target: str, source: str) -> int:
        with self._mutex:
            node = self._lookup(source)
            parent, name = self._parent(target)
            if name in parent.entries:
                raise fuse.FuseOSError(errno.EEXIST)
            parent.entries[name] = node.ino
            node.nlink += 1
        return 0

    # -- contents -----------------------------------------------------------------------

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._mutex:
            return bytes(self._node(path, fh).data[offset:offset + size])

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self._mutex:
            node = self._node(path, fh)
            end = offset + len(data)
            if len(node.data) < offset:
                node.data.extend(b"\0" * (offset - len(node.data)))
            node.data[offset:end] = data
            node.mtime_ns = time.time_ns()
            self.counters["written"] += len(data)
            return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self._mutex:
            node = self._node(path, fh)
            if length < len(node.data):
                del node.data[length:]
            else:
                node.data.extend(b"\0" * (length - len(node.data)))
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self._mutex:
            node = self._node(path, fh)
            node.durable = bytes(node.data)
            self.counters["fsync"] += 1
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        with self._mutex:
            node = self._lookup(path)
            node.durable_entries = dict(node.entries)
            self.counters["fsyncdir"] += 1
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0


def _commands(fs: PowerLossFS, mountpoint: str, remount: threading.Event) -> None:
    for line in sys.stdin:
        command = line.strip()
        if command == "cut":
            print(f"cut {fs.cut()}", flush=True)
        elif command == "sync":
            fs.sync_all()
            print("synced", flush=True)
        elif command == "stats":
            with fs._mutex:
                print("stats " + json.dumps(fs.counters), flush=True)
        elif command == "remount":
            remount.set()
            subprocess.run(["umount", mountpoint], check=False)  # noqa: S603, S607
        elif command == "quit":
            break
        else:
            print(f"unknown command {command!r}", flush=True)
    remount.clear()
    subprocess.run(["umount", mountpoint], check=False)  # noqa: S603, S607


class _Announcing(PowerLossFS):
    def init(self, path: str) -> None:
        print("mounted", flush=True)


def main() -> int:
    mountpoint = sys.argv[1]
    fs = _Announcing()
    remount = threading.Event()
    threading.Thread(target=_commands, args=(fs, mountpoint, remount), daemon=True).start()
    while True:
        remount.clear()
        fuse.FUSE(fs, mountpoint, foreground=True, allow_other=True, default_permissions=True,
                  attr_timeout=0, entry_timeout=0, negative_timeout=0, fsname="powerloss")
        if not remount.is_set():
            return 0


if __name__ == "__main__":
    sys.exit(main())
