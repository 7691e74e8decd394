"""Live event streams for WatchGraph.

The event log in Redis is the only source of truth: every event a watcher sends was read
with XRANGE from the graph's log, in seq order, from the watcher's cursor. What this module
adds is the wake-up and the sharing:

- The Lua scripts append the graph id to a per-shard ``notify`` stream whenever the log of
  a watched graph grows (a process registers the graphs it streams, ``ShardKeys.watched``,
  in the round trip of its first read, and renews them while it does: nobody pays for the
  notifications of graphs nobody watches); one reader per shard (per process) tails it
  and wakes the local watchers of that graph. A missed wake-up costs at most one
  heartbeat interval, never an event: a watcher re-reads the log after every heartbeat.
- The watchers of one graph in this process share a :class:`_Feed`: a window of the
  graph's log already read and encoded (serialized ``WatchGraphResponse`` bytes). One
  XRANGE and one encoding per event serve every watcher of the graph; a watcher behind
  the window (it started from an older cursor, or lagged) reads on its own until it
  reaches the window.

What one watcher holds is bounded: a batch of the shared window (references, not copies)
and the one message gRPC is writing, whose flow control stops the watcher while its client
does not read. A watcher that falls more than ``max_lag_s`` further behind its graph's
events than it was when it started (how long ago the next event it would send was recorded,
less that same delay at its first event: a replay from an old cursor starts behind, and
clock skew between workers and the API cancels out) is ended with ABORTED
(:func:`too_slow`) naming the last event it was sent: its client reads too slowly, and
watches again from there without missing anything. A client that reads nothing at all
cannot even be sent that status (it would queue behind the unread events): the edge resets
its stream (Envoy's watch idle timeout, docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import google.rpc.error_details_pb2 as error_details_pb2
import grpc
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError

from dago.api.errors import ApiError
from dago.store.client import STORE_ERRORS, raise_if_cancelling
from dago.store.events import (
    KIND,
    TERMINAL_KINDS,
    TIME,
    Entries,
    Stored,
    encode,
    encode_heartbeat,
    entry_range,
    expand,
    graph_prefix,
    item_event,
    unpack,
)
from dago.store.schema import Meta, Notify, Work
from dago.store.store import Store

log = logging.getLogger("dago.watch")

PAGE = 1000
"""Events per XRANGE of a feed (one read serves every watcher of the graph)."""
BATCH = 256
"""Events a watcher takes at a time (what a watcher whose client reads nothing holds), and
the page of a watcher reading on its own."""
IDLE_S = 0.05
"""How often the notify tail reads while no graph is watched in this process."""
TAIL_BLOCK_MS = 5000
WINDOW = 8192
WINDOW_BYTES = 4 << 20
"""A feed keeps at most this many encoded events and bytes; past either the oldest half is
dropped (watchers still behind it read on their own)."""
REGISTRATION_S = 60.0
RENEW_S = 15.0
"""A watched graph's registration lapses REGISTRATION_S after it was made or renewed; the
hub renews those it streams every RENEW_S. The lapse is this host's clock against Redis's
(the functions compare it with their NOW): clocks may differ by up to the gap."""
DONE_GRAPHS = 256
DONE_BYTES = 8 << 20
"""Complete logs of finished graphs kept after their last watcher left (an immutable log,
replayed again by the next watcher without reading or encoding it again): at most this many
graphs and bytes."""

_GRAPH, _FIRST = Work.GRAPH.encode(), Notify.FIRST.encode()
_HEAD = (Meta.STATE, Meta.SEQ, Meta.NAMESPACE)


class _Feed:
    """The part of one graph's log read so far for the local watchers, encoded."""

    __slots__ = (
        "base",
        "events",
        "fetching",
        "gen",
        "graph_id",
        "items",
        "prefix",
        "read_gen",
        "shard",
        "size",
        "terminal",
        "times",
        "waiters",
        "watchers",
    )

    def __init__(self, shard: int, graph_id: str, cursor: int) -> None:
        self.shard = shard
        self.graph_id = graph_id
        self.prefix = graph_prefix(graph_id)
        self.base = cursor  # seq of the event before events[0]
        self.events: list[bytes] = []
        self.times: list[int] = []  # when each event was recorded (ms since the epoch)
        self.items: list[bool] = []  # whether each event is a map item's (item_events)
        self.size = 0  # bytes in events
        self.terminal = False  # events ends with the graph's terminal event
        # Wake-ups seen (gen) and the value of gen when the log was last read to its end
        # (read_gen): the log may have grown since when they differ.
        self.gen = 1
        self.read_gen = 0
        self.fetching: asyncio.Future[None] | None = None
        self.waiters: set[asyncio.Future[bool]] = set()
        self.watchers = 0

    @property
    def end(self) -> int:
        """Seq of the last event read."""
        return self.base + len(self.events)

    def wake(self) -> None:
        """The log grew (or may have): wake the watchers waiting at its end."""
        self.gen += 1
        for fut in self.waiters:
            if not fut.done():
                fut.set_result(True)
        self.waiters.clear()

    def notice(self, first: int, events: list[bytes]) -> None:
        """The log grew: take the new events a notification carries when they follow what
        was read and nothing else can be missing (no read under way, none owed), then wake
        the watchers (who read the log themselves when the events were not taken)."""
        taken = (
            events and self.fetching is None and self.read_gen == self.gen and first == self.end + 1
        )
        if taken:
            self.add([(first + k, unpack(ev)) for k, ev in enumerate(events)])
        self.wake()
        if taken:
            self.read_gen = self.gen

    def add(self, entries: Entries) -> None:
        """Append entries read from the log after ``end`` (seqs may skip; never repeat)."""
        out, times, items = self.events, self.times, self.items
        size = self.size
        for seq, stored in entries:
            if seq <= self.end:
                continue
            if seq != self.end + 1:  # cannot happen with a gap-free log; stay correct anyway
                out, times, items = self.events, self.times, self.items = [], [], []
                size = 0
                self.base = seq - 1
            raw = encode(self.graph_id, seq, stored, self.prefix)
            out.append(raw)
            times.append(_recorded(stored))
            items.append(item_event(stored))
            size += len(raw)
            if stored[KIND] in TERMINAL_KINDS:
                self.terminal = True
                break
        if len(out) > WINDOW or size > WINDOW_BYTES:
            drop = len(out) // 2
            size -= sum(len(x) for x in out[:drop])
            del out[:drop]
            del times[:drop]
            del items[:drop]
            self.base += drop
        self.size = size


class EventHub:
    """Wakes local watchers when their graph's event log grows, and shares what they read."""

    def __init__(
        self, store: Store, heartbeat_ms: int, cluster: bool, max_lag_s: float = 60.0
    ) -> None:
        self._store = store
        self._heartbeat = heartbeat_ms / 1000
        self._max_lag_ms = int(max_lag_s * 1000)
        shards = list(range(store.keys.shards))
        self._groups = [[s] for s in shards] if cluster else [shards]
        self._feeds: dict[str, _Feed] = {}
        self._done: OrderedDict[str, _Feed] = OrderedDict()
        self._done_bytes = 0
        self._active = asyncio.Event()  # set when a watch starts
        # Graphs whose first head() (the watch's check) registers them as watched.
        self._unregistered: set[str] = set()
        # A single Redis (not a cluster): the read path uses connections of its own.
        self._direct = _Direct(store.redis) if isinstance(store.redis, aioredis.Redis) else None

    async def run(self) -> None:
        """Tail the notify streams until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for group in self._groups:
                tg.create_task(self._tail(group))
            tg.create_task(self._renew())

    async def close(self) -> None:
        """Close the read path's own connections (once ``run`` has ended)."""
        if self._direct is not None:
            await self._direct.close()

    async def _tail(self, shards: list[int]) -> None:
        keys = [self._store.keys.shard(s).notify for s in shards]
        if self._direct is not None:
            await self._tail_direct(keys)
            return
        feeds = self._feeds
        async for fields in self._store.follow(keys, block_ms=TAIL_BLOCK_MS):
            if fields is None:
                self._wake_all()  # wake-ups may have been missed: every watcher re-reads
                continue
            graph_id, first, events = _notice(list(fields.items()))
            feed = feeds.get(graph_id)
            if feed is not None:
                feed.notice(first, events)

    async def _tail_direct(self, keys: list[str]) -> None:
        """The notify tail of a single Redis, on a connection of its own (not the client's
        pool): each XREAD costs a third of a client command. The last ids read are kept,
        never ``$``, so no entry is skipped between reads: while no graph is watched here,
        the tail reads at most every IDLE_S and wakes at once when a watch starts."""
        ids = await self._last_ids(keys)
        conn: Any = self._store.redis.connection_pool.make_connection()
        feeds = self._feeds
        try:
            while True:
                raise_if_cancelling()
                if not feeds:
                    self._active.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(IDLE_S):
                            await self._active.wait()
                try:
                    if not conn.is_connected:
                        await conn.connect()
                    block = ("BLOCK", TAIL_BLOCK_MS) if feeds else ()
                    await conn.send_command("XREAD", "COUNT", 1000, *block, "STREAMS", *keys, *ids)
                    res = await conn.read_response()
                except STORE_ERRORS as e:
                    log.warning("reading %s failed: %s", ", ".join(keys), e)
                    await conn.disconnect(nowait=True)
                    self._wake_all()  # wake-ups may have been missed: every watcher re-reads
                    await asyncio.sleep(0.5)
                    continue
                # RESP3 (redis-py's default) sends a map, RESP2 a list of [key, entries].
                for key, entries in res.items() if isinstance(res, dict) else res or ():
                    i = keys.index(key.decode())
                    for entry_id, fields in entries:
                        ids[i] = entry_id
                        pairs = list(zip(fields[::2], fields[1::2], strict=True))
                        graph_id, first, events = _notice(pairs)
                        feed = feeds.get(graph_id)
                        if feed is not None:
                            feed.notice(first, events)
        finally:
            await conn.disconnect(nowait=True)

    async def _last_ids(self, keys: list[str]) -> list[bytes | str]:
        """The id of each stream's last entry ("0-0" for an empty or missing stream)."""
        while True:
            raise_if_cancelling()
            try:
                pipe = self._store.redis.pipeline(transaction=False)
                for key in keys:
                    pipe.xrevrange(key, count=1)
                found = await pipe.execute()
                return [last[0][0] if last else "0-0" for last in found]
            except STORE_ERRORS as e:
                log.warning("reading %s failed: %s", ", ".join(keys), e)
                await asyncio.sleep(0.5)

    def _wake_all(self) -> None:
        for feed in self._feeds.values():
            feed.wake()

    async def _read(self, shard: int, graph_id: str, after: int, count: int) -> Entries:
        if self._direct is None:
            return await self._store.events(shard, graph_id, after, count)
        events = self._store.keys.shard(shard).graph(graph_id).events
        (found,) = await self._direct.call(_xrange(events, after, count))
        return _entries(found, after)[:count]

    async def head(
        self, shard: int, graph_id: str, after: int, count: int
    ) -> tuple[bytes | None, bytes | None, bytes | None, Entries]:
        """A graph's state, seq and namespace and, when ``count``, its first ``count``
        events after ``after``: one round trip (the keys share the graph's slot). A graph
        this process starts watching is registered (``ShardKeys.watched``) first, in the
        same round trip: its log's growth after this read is named in ``notify``."""
        sk = self._store.keys.shard(shard)
        gk = sk.graph(graph_id)
        register = graph_id in self._unregistered
        self._unregistered.discard(graph_id)
        if self._direct is not None:
            commands: list[tuple[Any, ...]] = []
            if register:
                commands.append(("ZADD", sk.watched, "GT", _lapse(), graph_id))
            commands.append(("HMGET", gk.meta, *_HEAD))
            if count:
                commands.append(_xrange(gk.events, after, count))
            replies = (await self._direct.call(*commands))[1 if register else 0 :]
            found = _entries(replies[1], after)[:count] if count else []
            return (*_head(replies[0]), found)
        pipe = self._store.redis.pipeline(transaction=False)
        if register:
            pipe.zadd(sk.watched, {graph_id: _lapse()}, gt=True)
        pipe.hmget(gk.meta, *_HEAD)
        if count:
            lo, hi = entry_range(after, count)
            pipe.xrange(gk.events, min=lo, max=hi, count=count)
        replies = (await pipe.execute())[1 if register else 0 :]
        state, seq, ns = replies[0]
        return state, seq, ns, expand(replies[1], after)[:count] if count else []

    async def forget(self, shard: int, graph_id: str) -> None:
        """Take back the registration of a graph Redis does not hold (``head`` registers
        before it can know; an unknown or archived id has no log that grows), so calls
        with made-up ids leave nothing behind. Best effort: a registration left lapses."""
        with contextlib.suppress(*STORE_ERRORS):
            await self._store.redis.zrem(self._store.keys.shard(shard).watched, graph_id)

    async def _renew(self) -> None:
        """Keep the graphs watched here registered (``head`` registered each one)."""
        while True:
            await asyncio.sleep(RENEW_S)
            live = [f for f in self._feeds.values() if not f.terminal]
            if not live:
                continue
            until = _lapse()
            try:
                pipe = self._store.redis.pipeline(transaction=False)
                for feed in live:
                    watched = self._store.keys.shard(feed.shard).watched
                    pipe.zadd(watched, {feed.graph_id: until}, gt=True)
                await pipe.execute()
            except STORE_ERRORS as e:
                # Their watchers still re-read the log at every heartbeat.
                log.warning("renewing the watched graphs failed: %s", e)

    async def _extend(self, feed: _Feed, first: Callable[[], Awaitable[Entries]] | None) -> None:
        """Read the log after the feed's end (one page); concurrent callers share one read."""
        if feed.fetching is not None:
            await asyncio.shield(feed.fetching)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        feed.fetching = done
        gen = feed.gen
        try:
            if first is not None:
                entries = await first()
            else:
                entries = await self._read(feed.shard, feed.graph_id, feed.end, PAGE)
            feed.add(entries)
            # A full page may have more behind it; a wake-up during the read may too.
            feed.read_gen = gen if len(entries) < PAGE else 0
        finally:
            feed.fetching = None
            done.set_result(None)

    async def _wait(self, feed: _Feed) -> bool:
        """Wait for a wake-up of the feed; False after a heartbeat interval without one."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        feed.waiters.add(fut)
        timer = loop.call_later(self._heartbeat, _expire, fut)
        try:
            return await fut
        finally:
            timer.cancel()
            feed.waiters.discard(fut)

    async def watch(
        self,
        shard: int,
        graph_id: str,
        after_seq: int,
        check: Callable[[int], Awaitable[Entries | None]],
        item_events: bool = True,
    ) -> AsyncIterator[list[bytes]]:
        """Events after ``after_seq`` in batches of serialized ``WatchGraphResponse``: the
        stored ones, then new ones as they come, heartbeats while idle; ends after the
        terminal event.

        ``check(count)`` is awaited once, before anything is sent: it raises when the
        graph may not be watched, returns None when there is nothing to send, else the
        first ``count`` stored events after ``after_seq`` (``count`` is 0 when this
        process already reads the graph's log: the caller can then skip the read).
        ``item_events`` False leaves out map items' events (``events.item_event``)."""
        feed = self._feeds.get(graph_id)
        if feed is None:
            feed = self._done.pop(graph_id, None)
            if feed is not None:
                self._done_bytes -= feed.size
            else:
                feed = _Feed(shard, graph_id, after_seq)
                self._unregistered.add(graph_id)  # by the first head() (check)
            self._feeds[graph_id] = feed
            self._active.set()
        feed.watchers += 1
        cursor = after_seq
        try:
            if feed.end == after_seq and feed.fetching is None and feed.read_gen != feed.gen:
                # Nothing read yet at this cursor: check and read the first page at once.
                checked = False

                async def first() -> Entries:
                    nonlocal checked
                    entries = await check(PAGE)
                    checked = True
                    if entries is None:
                        raise _NothingToSend
                    return entries

                try:
                    await self._extend(feed, first)
                except _NothingToSend:
                    return
                if not checked and await check(0) is None:  # another watcher's read ran
                    return
            elif await check(0) is None:
                return
            lag = _Lag(self._max_lag_ms)
            while True:
                raise_if_cancelling()
                if cursor < feed.base:
                    # Behind the shared window: read on our own up to it.
                    entries = await self._read(shard, graph_id, cursor, BATCH)
                    if entries:
                        lag.check(graph_id, cursor, _recorded(entries[0][1]))
                    if not item_events:
                        kept = [e for e in entries if not item_event(e[1])]
                        if entries and not kept:  # only items' events: skip them
                            cursor = min(entries[-1][0], feed.base)
                            continue
                        entries = kept
                    batch, last, ended = _encode_until(graph_id, entries, feed.base, feed.prefix)
                    if batch:
                        cursor = last
                        yield batch
                        if ended:
                            return
                    else:
                        cursor = feed.base  # nothing stored below the window
                    continue
                if cursor < feed.end:
                    start = cursor - feed.base
                    lag.check(graph_id, cursor, feed.times[start])
                    batch = feed.events[start : start + BATCH]
                    cursor += len(batch)
                    if not item_events:
                        flags = feed.items[start : start + len(batch)]
                        batch = [ev for ev, item in zip(batch, flags, strict=True) if not item]
                        if not batch:
                            continue
                    yield batch
                    continue
                if feed.terminal:
                    return
                if feed.read_gen != feed.gen or feed.fetching is not None:
                    await self._extend(feed, None)
                    continue
                if not await self._wait(feed):
                    yield [encode_heartbeat(graph_id, cursor, int(time.time() * 1000))]
                    feed.read_gen = 0  # re-read after every heartbeat: wake-ups can be lost
        finally:
            feed.watchers -= 1
            self._unregistered.discard(graph_id)
            if not feed.watchers and self._feeds.get(graph_id) is feed:
                del self._feeds[graph_id]
                self._keep(feed)

    def _keep(self, feed: _Feed) -> None:
        """Keep a finished graph's complete log for the next watcher (see DONE_GRAPHS)."""
        if not (feed.terminal and feed.base == 0 and feed.size <= DONE_BYTES // 4):
            return
        feed.waiters.clear()
        self._done[feed.graph_id] = feed
        self._done_bytes += feed.size
        while len(self._done) > DONE_GRAPHS or self._done_bytes > DONE_BYTES:
            _, old = self._done.popitem(last=False)
            self._done_bytes -= old.size


class _Lag:
    """How far one watcher is behind its graph's events: how long ago the next event it
    would send was recorded, compared with the same at its first event."""

    __slots__ = ("baseline", "limit")

    def __init__(self, limit_ms: int) -> None:
        self.limit = limit_ms
        self.baseline: int | None = None

    def check(self, graph_id: str, cursor: int, recorded_ms: int) -> None:
        """Before sending the event after ``cursor``, recorded at ``recorded_ms``: raise
        :func:`too_slow` when the watcher fell more than the limit further behind."""
        behind = int(time.time() * 1000) - recorded_ms
        if self.baseline is None:
            self.baseline = behind
        elif behind - self.baseline > self.limit:
            raise too_slow(graph_id, cursor, (behind - self.baseline) / 1000, self.limit / 1000)


def too_slow(graph_id: str, sent_seq: int, behind_s: float, limit_s: float) -> ApiError:
    """ABORTED for a watcher that fell too far behind its graph's log, with an ErrorInfo
    (reason ``WATCH_TOO_SLOW``) whose ``last_seq`` is the last event it was sent: the client
    watches again after it (``after_seq``, or Last-Event-ID) and misses nothing. ABORTED, not
    RESOURCE_EXHAUSTED: "retry at a higher level" is what the client should do, and what
    dago's clients already do on it (they resume a watch after ABORTED or UNAVAILABLE)."""
    info = error_details_pb2.ErrorInfo(reason="WATCH_TOO_SLOW", domain="dago.v1")
    info.metadata["graph_id"] = graph_id
    info.metadata["last_seq"] = str(sent_seq)
    info.metadata["behind_s"] = f"{behind_s:.0f}"
    info.metadata["limit_s"] = f"{limit_s:g}"
    return ApiError(
        grpc.StatusCode.ABORTED,
        f"this watch fell {behind_s:.0f} s behind the graph's events (more than "
        f"DAGO_WATCH_MAX_LAG_S, {limit_s:g} s, further behind than when it started): its "
        "client reads too slowly. The last event "
        f"sent was seq {sent_seq}; watch again with after_seq={sent_seq} (or Last-Event-ID) "
        "to continue without a gap",
        [info],
    )


class _NothingToSend(Exception):
    """The watch check found nothing to send (the graph ended before the cursor)."""


class _Direct:
    """Connections of a single Redis for the watch read path, outside the client's pool:
    commands are packed and sent together and their replies read straight from the
    connection, at a third of the CPU of a client command (the client's per-command layers
    were most of a watch's Redis cost). At most SIZE connections: more concurrent reads
    wait for one. A connection whose exchange did not complete (an error, a cancellation)
    is closed, never reused."""

    SIZE = 16

    def __init__(self, client: aioredis.Redis) -> None:
        self._pool: Any = client.connection_pool  # redis-py leaves it untyped
        self._free: list[AbstractConnection] = []
        self._open = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def call(self, *commands: tuple[Any, ...]) -> list[object]:
        """The replies of ``commands`` (one round trip), as Redis sent them: parse them
        with ``_head`` and ``_entries``."""
        while not self._free and self._open >= self.SIZE:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append(fut)
            try:
                await fut
            except BaseException:
                if fut in self._waiting:
                    self._waiting.remove(fut)
                else:
                    self._wake()  # woken, but leaving: the next waiter takes the turn
                raise
        if self._free:
            conn: Any = self._free.pop()
        else:
            conn = self._pool.make_connection()
            self._open += 1
        done = False
        try:
            if not conn.is_connected:
                await conn.connect()
            await conn.send_packed_command(conn.pack_commands(commands))
            replies = [await conn.read_response() for _ in commands]
            done = True
            return replies
        finally:
            if done:
                self._free.append(conn)
            else:
                self._open -= 1
            self._wake()
            if not done:
                await conn.disconnect(nowait=True)

    async def close(self) -> None:
        """Close the idle connections (a connection in use is closed by its reader)."""
        free, self._free = self._free, []
        self._open -= len(free)
        for conn in free:
            await conn.disconnect(nowait=True)

    def _wake(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def _lapse() -> int:
    """When a registration made now lapses (ms since the epoch)."""
    return int((time.time() + REGISTRATION_S) * 1000)


def _xrange(key: str, after: int, count: int) -> tuple[Any, ...]:
    return ("XRANGE", key, *entry_range(after, count), "COUNT", count)


def _head(reply: object) -> tuple[bytes | None, bytes | None, bytes | None]:
    """The HMGET reply of ``_HEAD`` (state, seq, namespace)."""
    if not isinstance(reply, list) or len(reply) != len(_HEAD):
        raise ResponseError(f"unexpected reply to HMGET of {_HEAD}: {reply!r:.80}")
    state, seq, ns = reply
    return state, seq, ns


def _entries(found: object, after: int) -> Entries:
    """XRANGE's reply (entries with ids ``0-<seq of their last event>``) as the events after
    seq ``after``."""
    if not found:
        return []
    if not isinstance(found, list):
        raise ResponseError(f"unexpected reply to XRANGE: {found!r:.80}")
    return expand(found, after)


def _notice(fields: list[tuple[bytes, bytes]]) -> tuple[str, int, list[bytes]]:
    """A notify entry's (field, value) pairs as (graph id, seq of the first event carried,
    the events carried; schema.Notify)."""
    graph_id, first, events = "", 0, []
    for name, value in fields:
        if name == _GRAPH:
            graph_id = value.decode()
        elif name == _FIRST:
            first = int(value)
        else:
            events.append(value)
    return graph_id, first, events


def _recorded(stored: Stored) -> int:
    """When a stored event was recorded (ms since the epoch; 0 when it says nothing)."""
    try:
        return int(stored[TIME] or 0)
    except ValueError:
        return 0


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


def _encode_until(
    graph_id: str, entries: Entries, limit: int, prefix: bytes
) -> tuple[list[bytes], int, bool]:
    """Encode entries up to seq ``limit``; (batch, last seq, whether it ended the log)."""
    out: list[bytes] = []
    last = 0
    for seq, stored in entries:
        if seq > limit:
            break
        out.append(encode(graph_id, seq, stored, prefix))
        last = seq
        if stored[KIND] in TERMINAL_KINDS:
            return out, last, True
    return out, last, False
