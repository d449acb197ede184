"""A device-mapper thin pool as the devmapper snapshotter drives it, through ``dmsetup``.

Everything here is a thin layer over one command each, run through
:class:`~cargohold.snapshotters.runner.Runner`, plus the parsers for what ``dmsetup`` prints:

- ``dmsetup status <pool>`` of a thin pool (kernel ``Documentation/admin-guide/device-mapper/
  thin-provisioning.rst``)::

      <start> <length> thin-pool <transaction id> <used meta>/<total meta>
          <used data>/<total data> <held metadata root> ro|rw|out_of_data_space
          [no_]discard_passdown [error|queue]_if_no_space needs_check|- <meta low watermark>

  or ``<start> <length> thin-pool Fail`` when the pool has failed.
- ``dmsetup status <thin device>``: ``<start> <length> thin <mapped sectors> <highest mapped
  sector>`` (or ``Fail``).
- ``dmsetup table <pool>``: ``<start> <length> thin-pool <metadata dev> <data dev>
  <data block size in sectors> <low water mark> ...``.

Sizes in the config read like containerd's (``10GB``, ``512MiB``, ``1T``, plain bytes); as in
containerd both ``GB`` and ``GiB`` mean powers of 1024.
"""

from __future__ import annotations

from cargohold import types
from cargohold._record import record
from cargohold.errors import FailedPrecondition, InvalidArgument
from cargohold.snapshotters.runner import CommandFailed, Result, Runner

SECTOR = 512
MAX_THIN_ID = 0xFFFFFF  # thin device ids are 24-bit
_BAD_MODES = ("out_of_data_space", "ro", "read_only", "Fail", "Error")


class PoolFull(FailedPrecondition):
    """The thin pool has no room (or no write mode) for what was asked."""


def parse_size(value: str | int) -> int:
    """Bytes in ``value``: an int, or text such as ``10GB``, ``512MiB``, ``1.5g``, ``4096``
    (binary units, as containerd's devmapper reads them); at least 1 MiB.
    """
    n = types.parse_size(value, binary=True)
    if n < 1 << 20:
        raise InvalidArgument(f"size {value!r}: smaller than 1 MiB",
                              hint="a base image needs room for a file system")
    return n


@record(frozen=True)
class PoolStatus:
    """One parsed ``dmsetup status`` line of a thin pool; ``line`` is the text as printed."""

    line: str
    mode: str
    meta_used: int = 0
    meta_total: int = 0
    data_used: int = 0
    data_total: int = 0
    needs_check: bool = False

    @property
    def free_blocks(self) -> int:
        return self.data_total - self.data_used


def _ratio(text: str) -> tuple[int, int]:
    used, _, total = text.partition("/")
    return int(used), int(total)


def parse_pool_status(line: str) -> PoolStatus:
    """Parse a thin-pool status line; InvalidArgument when it is not one."""
    f = line.split()
    if len(f) < 4 or f[2] != "thin-pool":
        raise InvalidArgument(f"status {line.strip()!r}: not a thin-pool status line")
    if f[3] in ("Fail", "Error"):
        return PoolStatus(line.strip(), f[3])
    try:
        meta, data = _ratio(f[4]), _ratio(f[5])
        mode = f[7]
    except (IndexError, ValueError):
        raise InvalidArgument(f"status {line.strip()!r}: not a thin-pool status line") from None
    return PoolStatus(line.strip(), mode, meta[0], meta[1], data[0], data[1],
                      "needs_check" in f[8:])


def parse_thin_mapped(line: str) -> int:
    """Mapped sectors in a thin device's status line."""
    f = line.split()
    if len(f) < 4 or f[2] != "thin" or not f[3].isdigit():
        raise FailedPrecondition(f"thin device status {line.strip()!r}: cannot read mapped "
                                 "sectors (failed device?)")
    return int(f[3])


class Pool:
    """Commands against one thin pool and the thin devices in it."""

    def __init__(self, name: str, runner: Runner) -> None:
        self.name = name
        self.runner = runner
        self.path = f"/dev/mapper/{name}"
        self._table: list[str] | None = None

    def dmsetup(self, *args: str, check: bool = True) -> Result:
        """Run ``dmsetup <args>``."""
        return self.runner.run(["dmsetup", *args], check=check)

    # --- the pool ---------------------------------------------------------------------------------
    def status(self) -> PoolStatus:
        """The pool's parsed status (CommandFailed when the pool does not exist)."""
        return parse_pool_status(self.dmsetup("status", self.name).stdout)

    def status_note(self) -> str:
        """``dmsetup status <pool>: <line>`` for error messages; never raises."""
        try:
            res = self.dmsetup("status", self.name, check=False)
        except Exception as exc:  # noqa: BLE001 - a diagnostic must not replace the real error
            return f"dmsetup status {self.name}: unavailable ({exc})"
        text = (res.stdout if res.ok else res.stderr).strip() or f"exit {res.returncode}"
        return f"dmsetup status {self.name}: {text}"

    def table(self) -> list[str]:
        """The fields of ``dmsetup table <pool>`` (asked once per handle)."""
        if self._table is None:
            self._table = self.dmsetup("table", self.name).stdout.split()
            if len(self._table) < 7 or self._table[2] != "thin-pool":
                raise FailedPrecondition(f"device {self.name}: not a thin pool "
                                         f"(table {' '.join(self._table)!r})")
        return self._table

    def block_bytes(self) -> int:
        """The pool's data block size in bytes."""
        return int(self.table()[5]) * SECTOR

    def ensure_room(self, need: int, what: str) -> PoolStatus:
        """Refuse (PoolFull, with the status line) unless the pool can take ``need`` bytes.

        Checked before any thin device is made: a full pool otherwise shows up only as an I/O
        error in the middle of mkfs, or as a file system that fails later.
        """
        st = self.status()
        problem = ""
        if st.mode in _BAD_MODES or st.needs_check:
            problem = f"pool is in {st.mode}{' needs_check' if st.needs_check else ''} mode"
        elif st.meta_total and st.meta_used >= st.meta_total:
            problem = "metadata space is exhausted"
        else:
            block = self.block_bytes()
            need_blocks = max(1, -(-need // block))
            if st.free_blocks < need_blocks:
                problem = (f"{st.free_blocks} free data blocks, {what} needs {need_blocks} "
                           f"(blocks of {block} bytes)")
        if problem:
            raise PoolFull(
                f"thin pool {self.name}: full, refusing {what}: {problem}; "
                f"dmsetup status {self.name}: {st.line}",
                hint=f"free space with 'hold gc', or grow the pool: extend its data device "
                     f"(lvextend -L +<size> <vg>/{self.name} for LVM), or grow a dmsetup pool's "
                     f"data device and run 'dmsetup reload {self.name} --table \"0 <new "
                     f"sectors> thin-pool <meta dev> <data dev> <block> <low water>\"' and "
                     f"'dmsetup resume {self.name}'; a pool in read-only or needs_check mode "
                     "needs thin_check/thin_repair first")
        return st

    def message(self, text: str, *, check: bool = True) -> Result:
        """``dmsetup message <pool> 0 "<text>"`` (create_thin, create_snap, delete, ...)."""
        return self.dmsetup("message", self.name, "0", text, check=check)

    # --- thin devices ---------------------------------------------------------------------------
    def activate(self, dev: str, tid: int, sectors: int) -> None:
        """Load thin id ``tid`` of this pool as ``/dev/mapper/<dev>``."""
        self.dmsetup("create", dev, "--table", f"0 {sectors} thin {self.path} {tid}")

    def is_active(self, dev: str) -> bool:
        """Whether ``/dev/mapper/<dev>`` exists (asked by name)."""
        return self.dmsetup("info", dev, check=False).ok

    def deactivate(self, dev: str, *, check: bool = True) -> Result:
        """Remove ``/dev/mapper/<dev>``, retrying while something briefly holds it open."""
        return self.dmsetup("remove", "--retry", dev, check=check)

    def mapped_bytes(self, dev: str) -> int:
        """Bytes the active thin device ``dev`` has mapped in the pool."""
        return parse_thin_mapped(self.dmsetup("status", dev).stdout) * SECTOR


def gone(res: Result) -> bool:
    """Whether a failed dmsetup command failed only because the device is not there."""
    err = res.stderr
    return "does not exist" in err or "No such device" in err


def delete_thin(pool: Pool, tid: int) -> None:
    """``message delete <tid>``; a thin id that is already gone counts as deleted."""
    res = pool.message(f"delete {tid}", check=False)
    if not res.ok and "No data available" not in res.stderr:
        raise CommandFailed(res)
