"""Images: manifests, indexes, platforms, import, export, unpack, mount and unmount."""
