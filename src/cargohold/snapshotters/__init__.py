"""Snapshotters: the shared contract, bookkeeping, and the overlayfs, native, btrfs, zfs and
devmapper backends.
"""
