"""The ``podshell`` command line."""
