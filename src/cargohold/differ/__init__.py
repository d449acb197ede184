"""The differ: apply layer tars to mounts and compare mounts into layer tars."""
