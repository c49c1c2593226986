"""One kind of object from the API server, kept current: list it, then
watch from the list's resourceVersion, as client-go's reflector does.

A watch the server ends is resumed from the last resourceVersion seen
(bookmarks move it on while nothing changes, so a resume rarely falls out
of the server's history); C{410 Gone} lists everything again; any other
failure waits, doubling from half a second to half a minute, and resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from podshell.gateway.kubernetes.client import APIError, APIServer
from podshell.protocols.watch import EventKind, WatchEvent

log = Logger()

PAGE = 500  # objects per list request, as client-go pages
WATCH_SECONDS = 300  # the server ends a watch after this; it is resumed at once
FIRST_RETRY, LAST_RETRY = 0.5, 30.0

T = TypeVar("T")
Key = tuple[str, str]  # namespace, name


@dataclass
class Changes(Generic[T]):
    """What one list or event changed: (key, old, new), None for absent."""

    each: list[tuple[Key, T | None, T | None]] = field(default_factory=list)


def key_of(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class Informer(Generic[T]):
    """The objects at C{path} (with C{selector}), each kept as C{keep(obj)}
    makes it (None: not kept); C{changed} hears of every change."""

    def __init__(
        self,
        reactor: Any,
        api: APIServer,
        path: str,
        keep: Callable[[dict[str, Any]], T | None],
        changed: Callable[[Changes[T]], None],
        selector: str = "",
        what: str = "objects",
    ) -> None:
        self.reactor = reactor
        self.api = api
        self.path = path
        self.keep = keep
        self.changed = changed
        self.selector = selector
        self.what = what
        self.objects: dict[Key, T] = {}
        self.version = ""
        self.synced: Deferred[None] = Deferred()  # the first full list
        self.problem: str | None = "not listed yet"
        self.events = 0
        self._retry = FIRST_RETRY
        self._pending: Deferred[Any] | None = None
        self._timer: IDelayedCall | None = None
        self._stopped = False
        self._dropped: Deferred[Any] | None = None  # cancelled on purpose

    def _query(self) -> dict[str, str]:
        return {"labelSelector": self.selector} if self.selector else {}

    def start(self) -> None:
        self._stopped = False
        self._dropped = None
        self._list()

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._drop()

    def _drop(self) -> None:
        """Stop the request in flight, on purpose (its failure is not news)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            self._dropped = pending
            pending.cancel()

    # Listing.
    def _list(self, found: dict[Key, T] | None = None, after: str = "", began: float | None = None) -> None:
        found = {} if found is None else found
        began = time.monotonic() if began is None else began
        query = {**self._query(), "limit": str(PAGE), **({"continue": after} if after else {})}
        d = self._pending = self.api.get(self.path, query)
        d.addCallbacks(self._page, self._failed, callbackArgs=(found, began), errbackArgs=(True,))

    def _page(self, page: dict[str, Any], found: dict[Key, T], began: float) -> None:
        for obj in page.get("items") or []:
            kept = self.keep(obj)
            if kept is not None:
                found[key_of(obj)] = kept
        meta = page.get("metadata") or {}
        if meta.get("continue"):
            self._list(found, str(meta["continue"]), began)
            return
        changes: Changes[T] = Changes()
        for key, old in self.objects.items():
            if key not in found:
                changes.each.append((key, old, None))
        changes.each += [(key, self.objects.get(key), new) for key, new in found.items()]
        self.objects = found
        self.version = str(meta.get("resourceVersion") or "")
        self._healthy(f"{len(found)} {self.what} listed in {time.monotonic() - began:.2f}s")
        self.changed(changes)
        if not self.synced.called:
            self.synced.callback(None)
        self._watch()

    # Watching.
    def _watch(self) -> None:
        query = {
            **self._query(),
            "resourceVersion": self.version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        d = self._pending = self.api.watch(self.path, query, self._event)
        d.addCallbacks(self._ended, self._failed, errbackArgs=(False,))

    def _event(self, event: WatchEvent) -> None:
        if event.kind is EventKind.ERROR:
            gone = event.status_code == 410
            message = str(event.object.get("message") or event.object)
            self._drop()
            if gone:
                log.info(
                    "{what}: the watch fell out of the server's history ({message}); listing again",
                    what=self.what,
                    message=message,
                )
                self._later(self._list, 0)
            else:
                self._trouble(f"the watch of {self.what} failed: {message}")
            return
        self.events += 1
        if self.problem is not None:
            self._healthy(f"watching {self.what} again")
        self.version = event.resource_version or self.version
        self._retry = FIRST_RETRY
        if event.kind is EventKind.BOOKMARK:
            return
        key = key_of(event.object)
        old = self.objects.get(key)
        new = None if event.kind is EventKind.DELETED else self.keep(event.object)
        if new is None:
            self.objects.pop(key, None)
        else:
            self.objects[key] = new
        if old is not None or new is not None:
            self.changed(Changes([(key, old, new)]))

    def _ended(self, _: None) -> None:
        if not self._stopped:
            self._watch()  # the server's timeout: resume where it ended

    def _failed(self, failure: Failure, listing: bool) -> None:
        if self._stopped or (failure.check(CancelledError) and self._dropped is not None):
            self._dropped = None
            return
        if isinstance(failure.value, APIError) and failure.value.code == 410:
            log.info("{what}: resourceVersion {version} is gone; listing again", what=self.what, version=self.version)
            self._later(self._list, 0)
            return
        verb = "list" if listing else "watch"
        self._trouble(f"cannot {verb} {self.what} at {self.api.server}: {failure.getErrorMessage()}")

    def _trouble(self, problem: str) -> None:
        if problem != self.problem:
            log.warn("{problem}; trying again in {delay}s", problem=problem, delay=self._retry)
        self.problem = problem
        retry = self._watch if self.synced.called else self._list
        self._later(retry, self._retry)
        self._retry = min(self._retry * 2, LAST_RETRY)

    def _healthy(self, news: str) -> None:
        if self.problem is not None:
            log.info("{news}", news=news)
        self.problem = None

    def _later(self, what: Callable[[], None], delay: float) -> None:
        if self._stopped:
            return
        self._pending = None
        self._timer = self.reactor.callLater(delay, what)
