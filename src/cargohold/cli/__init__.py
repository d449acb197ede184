"""The ``hold`` command line: one module per noun; parse, call the library, format."""
