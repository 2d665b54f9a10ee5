"""The S3 endpoint's per-shard front: one :class:`~cachedaemon.server.http.HttpServer` per
shard (per shard process) on the ``server.s3_listen`` sockets, and the handler callable it runs.

:class:`S3Context` is one shard's S3 state, built on that shard's loop beside (and from) its
:class:`~cachedaemon.server.context.ShardContext` when the shard opens
(:class:`~cachedaemon.server.shard.Shard`): the SigV4 verifier, the bucket mode, the
object-path adapter and the multipart uploads this shard holds parts of. Nothing in it is
shared with another shard; the other shards reach it as this shard's ``s3`` service
(messages naming a method: :meth:`S3Context.everywhere`).

Around every operation the handler does, in order: ``503 ServiceUnavailable`` until start-up
recovery ends and while draining; addressing (:mod:`.router`); SigV4 (:mod:`.sigv4`); the
operation's name; in-flight accounting for the drain (the same count as ``/v1``'s); the
handler (:mod:`.handlers`); S3's XML error for whatever it raised (the daemon's own errors
through :func:`~.errors.from_daemon_error`, a bug as ``500 InternalError``); the request id
headers; the request metrics (route label ``s3:<Operation>``) and the JSON access log. The hot
path, a GET of a key with no query string on an endpoint without credentials, goes from the
addressing straight to :func:`~.handlers.read_object` (GetObject's body): SigV4 would only
check the payload hash's form (done there) and the operation can only be ``GetObject``. With
credentials every request is verified.

Shard 0 also sweeps expired multipart uploads; every shard closes parts of uploads that are
gone (:mod:`.multipart`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from cachedaemon.core.scheduling import scheduler
from cachedaemon.errors import CacheDaemonError
from cachedaemon.server import metrics
from cachedaemon.server.app import server_limits
from cachedaemon.server.context import ShardContext
from cachedaemon.server.http import HttpServer, Request, Response, StreamResponse
from cachedaemon.server.s3.buckets import Buckets, PrefixBuckets, SingleBucket
from cachedaemon.server.s3.errors import S3Error, error_body, from_daemon_error
from cachedaemon.server.s3.handlers import HANDLERS, XML, S3Call, read_object
from cachedaemon.server.s3.multipart import Uploads, uploads_dir, wipe
from cachedaemon.server.s3.objectpath import ObjectPath
from cachedaemon.server.s3.router import Addressing, operation
from cachedaemon.server.s3.sigv4 import Credentials, Verifier, check_payload

log = logging.getLogger("cachedaemon.s3")
access_log = logging.getLogger("cachedaemon.access")

METRIC_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE"})
#: How often shard 0 looks for expired uploads (at most; shorter for a short expiry).
SWEEP_INTERVAL_S = 600.0


@dataclass
class S3Context:
    """One shard's S3 state (see the module doc)."""

    ctx: ShardContext
    verifier: Verifier
    buckets: Buckets
    objects: ObjectPath
    uploads: Uploads
    domains: tuple[str, ...]
    region: str
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    # --- the calls one shard makes on every shard (the "s3" service of each shard) ----------

    async def everywhere(self, method: str, *args: Any) -> None:
        """Run this S3 service's ``method(*args)`` on every shard (this one included), as a
        message to each shard's ``s3`` service. A shard that is down is skipped: its parts
        went with it (the cache releases a dead shard's staging files)."""
        state = self.ctx.state
        results = await asyncio.gather(
            *(state.smp.call(shard, "s3", method, *args) for shard in range(state.shards)),
            return_exceptions=True)
        for shard, result in enumerate(results):
            if isinstance(result, BaseException):
                log.warning("s3: %s on shard %d failed: %r", method, shard, result)

    async def release_upload(self, upload_id: str) -> None:
        """The upload is gone: close the parts this shard holds (releasing their space)."""
        await self.uploads.release_local(upload_id)

    async def drop_older_part(self, upload_id: str, number: int, token: str) -> None:
        """Part ``number`` was uploaded again: close this shard's older copies."""
        await self.uploads.drop_older(upload_id, number, token)

    async def forget_bucket(self, bucket: str) -> None:
        """The bucket was deleted: stop remembering that it exists."""
        self.buckets.forget(bucket)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(BaseException):
                await task
        await self.uploads.close()


def make_s3_context(ctx: ShardContext) -> S3Context:
    """Build ``ctx``'s shard's S3 state (on that shard's loop) and register it."""
    settings = ctx.settings
    s3 = settings.s3
    creds = s3.credentials()
    region = settings.remote.region
    verifier = Verifier(Credentials(*creds) if creds is not None else None, region)
    buckets: Buckets = SingleBucket(s3.bucket, ctx.store, region) if s3.bucket_mode == "single" \
        else PrefixBuckets(ctx.store, region)
    state = S3Context(ctx, verifier, buckets, ObjectPath(ctx),
                      Uploads(uploads_dir(settings.storage.data_dir), ctx.shard), s3.domains,
                      region)
    ctx.extensions["s3"] = state
    state.tasks.append(asyncio.get_running_loop().create_task(_sweep_loop(state)))
    return state


async def prepare_uploads(data_dir: Any) -> None:
    """Start-up, before any shard serves S3: drop the uploads of an earlier run."""
    await asyncio.to_thread(wipe, uploads_dir(data_dir))


async def _sweep_loop(s3: S3Context) -> None:
    expiry = s3.ctx.settings.s3.upload_expiry
    interval = min(SWEEP_INTERVAL_S, max(expiry / 4, 0.05))

    broadcast = functools.partial(s3.everywhere, "release_upload")
    while True:
        await asyncio.sleep(interval)
        if s3.ctx.cache is None or not s3.ctx.state.ready:
            continue
        try:
            await s3.uploads.sweep(expiry, s3.ctx.shard == 0, broadcast)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("s3: sweeping multipart uploads failed: %s", exc)


_REQUEST_IDS = itertools.count(int.from_bytes(os.urandom(6), "big") << 16)


_ID_LINES = "x-amz-request-id: %s\r\nx-amz-id-2: %s\r\n"


def _request_id() -> str:
    """A request id unique in this process (random start, then counted: cheap)."""
    return f"{next(_REQUEST_IDS) & 0xFFFFFFFFFFFFFFFF:016X}"


def make_s3_handler(s3: S3Context) -> Any:
    ctx = s3.ctx
    json_log = ctx.settings.server.log_format == "json"
    # Fixed for the endpoint's life: credentials are read when the shard opens.
    open_endpoint = s3.verifier.open
    get = dict.get  # the request headers' keys are lower case: skip the case folding
    addressing = Addressing(s3.domains)
    record = metrics.REQUEST_STATS.record
    perf = time.perf_counter
    sched = scheduler()
    foreground_begin, foreground_end = sched.foreground_begin, sched.foreground_end

    def count(method: str, route: str, status: int, elapsed: float) -> None:
        if method not in METRIC_METHODS:
            method = "OTHER"
        record(method, route, status, elapsed)

    def render(err: S3Error, request: Request, request_id: str) -> Response:
        headers = {"x-amz-request-id": request_id, "x-amz-id-2": request_id,
                   "x-amz-bucket-region": s3.region, **err.headers}
        if err.status == 304:
            return Response(status=304, headers=headers)
        return Response(status=err.status, body=error_body(err, request.path, request_id),
                        content_type=XML, headers=headers)

    async def handle(request: Request) -> StreamResponse:
        start = perf()
        method = request.method
        request_id = _request_id()
        op = "unmatched"
        resp: StreamResponse
        try:
            state = ctx.state
            if state.draining:
                raise S3Error("ServiceUnavailable", "The daemon is shutting down.",
                              headers={"Connection": "close"})
            if not state.ready:
                raise S3Error("ServiceUnavailable", "The daemon is starting.")
            headers = request.headers
            work: Awaitable[StreamResponse]
            target = addressing(get(headers, "host"), request.path)
            if open_endpoint and method == "GET" and not request.query_string \
                    and target.key is not None:
                # The hot path. With no credentials to verify, all the signature check does is
                # the payload hash's form; and a GET of a key with no query is GetObject.
                check_payload(get(headers, "x-amz-content-sha256"))
                op = "GetObject"
                work = read_object(s3, request, target.bucket or "", target.key, request_id)
            else:
                signature = s3.verifier.verify(method, request.path, request.query_string,
                                               headers, target.bucket if target.virtual else None)
                op = operation(method, target, request.query, headers)
                work = HANDLERS[op](S3Call(request, s3, target, op, signature, request_id))
            ctx.enter()
            foreground_begin()  # object requests: the shard's metastore gives way to them
            try:
                resp = await work
            finally:
                foreground_end()
                ctx.leave()
            if not resp.prepared and "x-amz-request-id" not in resp.headers:
                # As header lines (encoded once here, not formatted with the others).
                resp.raw += (_ID_LINES % (request_id, request_id)).encode()
        except S3Error as exc:
            resp = render(exc, request, request_id)
        except CacheDaemonError as exc:
            resp = render(from_daemon_error(exc), request, request_id)
        except (asyncio.CancelledError, ConnectionError):
            count(method, "s3:" + op, 499, perf() - start)
            raise
        except Exception as exc:  # a bug: answer 500, keep serving
            log.error("s3: internal error in %s: %r", op, exc, exc_info=exc)
            resp = render(S3Error("InternalError", "We encountered an internal error. Please "
                                  "try again."), request, request_id)
        status = resp.status
        elapsed = perf() - start
        count(method, "s3:" + op, status, elapsed)
        if json_log:
            access_log.info(json.dumps({
                "ts": time.time(), "shard": ctx.shard, "method": method, "route": "s3:" + op,
                "path": request.path[:1024], "status": status,
                "duration_ms": round(elapsed * 1000, 3), "remote": request.remote,
                "request_id": request_id,
            }))
        return resp

    return handle


async def start_s3_server(ctx: ShardContext, sock: socket.socket, max_connections: int
                          ) -> tuple[HttpServer, S3Context]:
    """Serve the S3 endpoint of ``ctx``'s shard on ``sock`` (bound and listening)."""
    s3 = make_s3_context(ctx)
    server = HttpServer(make_s3_handler(s3), server_limits(ctx, max_connections))
    await server.start(sock)
    return server, s3
