"""The route table: every HTTP route of the daemon as data (method, template, handler, summary).

One :class:`RouteTable` (``ROUTES``) holds the routes; modules register theirs at import with
``@ROUTES.route("GET", "/v1/objects/{key+}", "Read an object")`` — the objects, cache and health
modules here, later the kv, domain and L1 modules. The same table drives request dispatch
(:meth:`RouteTable.match`, on the RAW path so percent-escapes and dot segments reach handlers
unchanged), the ``route`` label of the metrics (the template, never a key) and ``/openapi.json``.

Templates: literal segments, ``{name}`` (one segment) and a final ``{name+}`` (the rest of the
path, slashes included). Parameters are handed over still percent-encoded; handlers decode them
(``server.keys``). Literal routes win over parameterised ones at the same position.

Built at import, read-only afterwards: shared by every shard without locking.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cachedaemon.server.context import Call
    from cachedaemon.server.http import StreamResponse

Handler = Callable[["Call"], Awaitable["StreamResponse"]]


#: Paths whose routing is remembered (cleared when full: cheap and bounded).
MEMO_SIZE = 8192


@dataclass(frozen=True)
class Param:
    """A documented query parameter or header (for OpenAPI)."""

    name: str
    where: str  # query | header
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})
    required: bool = False


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    handler: Handler
    summary: str
    auth: bool = True  # needs the bearer token when one is configured
    tag: str = "misc"
    params: tuple[Param, ...] = ()
    responses: dict[int, str] = field(default_factory=dict)
    request_body: str | None = None  # content type of the body, if any
    handles_expect: bool = False  # no longer used: 100-continue is sent when the body is read
    segments: tuple[str, ...] = field(default=(), compare=False)
    #: The routes of one metastore domain (``{domain}`` in the path): they run on the
    #: domain's owner shard. Set by :meth:`RouteTable.add`.
    domain_routed: bool = field(default=False, compare=False)

    @property
    def greedy(self) -> bool:
        return bool(self.segments) and self.segments[-1].endswith("+}")

    @property
    def openapi_path(self) -> str:
        return self.template.replace("+}", "}")

    def path_params(self) -> list[str]:
        return [s[1:-1].rstrip("+") for s in self.segments if s.startswith("{")]


class RouteTable:
    def __init__(self) -> None:
        self._memo: dict[tuple[str, str], tuple[Route | None, dict[str, str], bool]] = {}
        self._routes: list[Route] = []
        self._by_key: dict[tuple[str, str], Route] = {}
        # Routes by their first two path segments (None: a parameter there), for dispatch.
        self._index: dict[tuple[str | None, str | None], list[Route]] = {}

    def add(self, route: Route) -> Route:
        self._memo.clear()
        segs = tuple(route.template.strip("/").split("/")) if route.template != "/" else ()
        for i, s in enumerate(segs):
            if s.startswith("{") and s.endswith("+}") and i != len(segs) - 1:
                raise ValueError(f"{route.template}: a {{name+}} parameter must come last")
        route = Route(**{**route.__dict__, "segments": segs,
                         "domain_routed": "{domain}" in segs})
        key = (route.method, route.template)
        if key in self._by_key:
            raise ValueError(f"route {route.method} {route.template} registered twice")
        self._by_key[key] = route
        self._routes.append(route)
        # Literal segments before parameters, then longer templates first.
        self._routes.sort(key=_specificity)
        index: dict[tuple[str | None, str | None], list[Route]] = {}
        for r in self._routes:
            index.setdefault(_index_key(r.segments), []).append(r)
        # Every lookup key gets its full candidate list (its own routes, those with a
        # parameter in second place, the all-parameter ones), most specific first.
        self._index = {}
        for a, b in list(index) + [(a, None) for a, _ in index] + [(None, None)]:
            keys = [(a, b), (a, None), (None, None)] if b is not None else \
                [(a, None), (None, None)] if a is not None else [(None, None)]
            merged = [r for k in dict.fromkeys(keys) for r in index.get(k, ())]
            self._index[(a, b)] = sorted(merged, key=_specificity)
        return route

    def route(self, method: str, template: str, summary: str, **kw: Any
              ) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            self.add(Route(method, template, fn, summary, **kw))
            return fn
        return deco

    def __iter__(self) -> Any:
        return iter(sorted(self._routes, key=lambda r: (r.template, r.method)))

    def match(self, method: str, raw_path: str) -> tuple[Route | None, dict[str, str], bool]:
        """``(route, raw params, path_known)``; ``path_known`` is True when some route matches
        the path with another method (for the ``Allow`` header). Remembered for the most
        recent paths (hot keys are routed once); the params dict is shared: read it only."""
        key = (method, raw_path)
        found = self._memo.get(key)
        if found is None:
            found = self._match_uncached(method, raw_path)
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[key] = found
        return found

    def _match_uncached(self, method: str, raw_path: str
                        ) -> tuple[Route | None, dict[str, str], bool]:
        stripped = raw_path.strip("/")
        parts = stripped.split("/") if stripped else []
        candidates = self._candidates(parts)
        for route in candidates:
            if route.method != method and not (
                    method == "HEAD" and route.method == "GET"
                    and ("HEAD", route.template) not in self._by_key):
                continue
            params = _match(route.segments, parts, raw_path)
            if params is not None:
                return route, params, True
        known = any(_match(r.segments, parts, raw_path) is not None for r in candidates)
        return None, {}, known

    def _candidates(self, parts: list[str]) -> list[Route]:
        a = parts[0] if parts else ""
        b = parts[1] if len(parts) > 1 else ""
        index = self._index
        found = index.get((a, b))
        if found is None:
            found = index.get((a, None))
            if found is None:
                found = index.get((None, None), [])
        return found

    def allowed(self, raw_path: str) -> list[str]:
        parts = raw_path.strip("/").split("/") if raw_path.strip("/") else []
        return sorted({r.method for r in self._routes if _match(r.segments, parts, raw_path)
                       is not None})


def _index_key(segs: tuple[str, ...]) -> tuple[str | None, str | None]:
    """The dispatch-index key of a template: its first two segments while they are literal."""
    a = segs[0] if segs else ""
    if a.startswith("{"):
        return (None, None)
    b = segs[1] if len(segs) > 1 else ""
    if b.startswith("{"):
        return (a, None)
    return (a, b)


def _specificity(route: Route) -> tuple[int, ...]:
    return (
        *(0 if not s.startswith("{") else (1 if not s.endswith("+}") else 2)
          for s in route.segments),
        -len(route.segments),
    )


def _match(segs: tuple[str, ...], parts: list[str], raw_path: str) -> dict[str, str] | None:
    params: dict[str, str] = {}
    for i, seg in enumerate(segs):
        if seg.startswith("{") and seg.endswith("+}"):
            if i >= len(parts):
                return None
            # The rest of the raw path, exactly as sent (keeps empty segments, trailing '/').
            prefix = "/" + "/".join(parts[:i]) + "/"
            rest = raw_path[len(prefix):] if raw_path.startswith(prefix) else "/".join(parts[i:])
            params[seg[1:-2]] = rest
            return params
        if i >= len(parts):
            return None
        if seg.startswith("{"):
            if parts[i] == "":
                return None
            params[seg[1:-1]] = parts[i]
        elif seg != parts[i]:
            return None
    if len(parts) != len(segs):
        return None
    return params


#: The daemon's routes. Handler modules add to it at import.
ROUTES = RouteTable()
