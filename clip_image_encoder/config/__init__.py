"""Options, declared once as data, and what is derived from them: validation, command-line flags, config files."""
