"""twistd entry point: ``twistd podshell``.  Imports lazily so that
``twistd --help`` stays fast."""

from twisted.application.service import ServiceMaker

podshell = ServiceMaker(
    "podshell",
    "podshell.server.tap",
    "podshell: shells, commands and port forwards inside containers",
    "podshell",
)
