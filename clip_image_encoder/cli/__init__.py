"""The command line: one module per command; nothing in the package imports it."""
