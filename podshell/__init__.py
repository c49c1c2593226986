"""podshell: shells, commands, file copies and port forwards inside containers."""

__version__ = "0.1.0"
