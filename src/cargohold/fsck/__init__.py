"""fsck: check the store and the metadata against each other, and repair what is safe."""
