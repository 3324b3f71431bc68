"""The Redis store: one Lua script per call (claim, apply, read, commit), one round trip each.

Redis is the shared, durable state of every ``detector run`` instance. Writes that must stay
consistent with each other (a batch's counters and the offsets they cover; an alert transition and
its outbox record) are each one atomic unit, so a crash, or a Redis that loses its last second of
AOF, always leaves a consistent point to resume from. The scripts use only stock Redis 7 commands
and no configuration: ``deploy/redis/redis.conf`` tunes nothing they rely on.
"""

from __future__ import annotations

import hashlib
import heapq
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
import redis

from detector.config import RedisConfig
from detector.errors import StaleProgress, StoreError
from detector.state.base import SMALL_SET, Commit, Delta, Progress, Read, ReadResult
from detector.state.keys import Keys

Observer = Callable[[str, float, bool], None]

# Claim hashes per time slice: few, so that a batch's claims share them (Redis calls per shard,
# not per event). Up to 128 claims a hash (8k a slice) they are compact listpacks (~30 B a claim);
# past that hashtables (~75 B a claim), against ~200 B for a key with a TTL per event.
CLAIM_SHARDS = 64

# KEYS: alerts, outbox, models, lease, dirty, outbox-seq.
# ARGV: owner, n_changes, (name, has_expected, expected, has_new, new, has_outbox, outbox)*,
#       n_snapshots, (name, blob)*, n_clean, member*.
_COMMIT_LUA = """
local owner = ARGV[1]
local n = tonumber(ARGV[2])
local i = 3
local applied = {}
for c = 1, n do
  local name = ARGV[i]
  local cur = redis.call('HGET', KEYS[1], name)
  local ok
  if ARGV[i + 1] == '1' then ok = (cur == ARGV[i + 2]) else ok = (cur == false) end
  if ok then
    if ARGV[i + 3] == '1' then
      redis.call('HSET', KEYS[1], name, ARGV[i + 4])
    else
      redis.call('HDEL', KEYS[1], name)
    end
    if ARGV[i + 5] == '1' then
      local id = string.format('%012d', redis.call('INCR', KEYS[6]))
      redis.call('HSET', KEYS[2], id, ARGV[i + 6])
    end
    applied[c] = 1
  else
    applied[c] = 0
  end
  i = i + 7
end
local ns = tonumber(ARGV[i])
i = i + 1
if ns > 0 and owner ~= '' and redis.call('GET', KEYS[4]) == owner then
  for s = 1, ns do
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
    i = i + 2
  end
else
  i = i + 2 * ns
end
local nc = tonumber(ARGV[i])
i = i + 1
for s = 1, nc do
  redis.call('SREM', KEYS[5], ARGV[i])
  i = i + 1
end
return applied
"""

# KEYS: lease. ARGV: owner, ttl_ms. Take a free lease or extend our own.
_LEASE_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# Compact sets: a per-entity distinct set holding one member set (one event's redeemer triple, say:
# most codes and accounts are seen once) lives as a field of a shared hash instead of a
# key of its own (~200 B of key, TTL and zset overhead). The hashes are per time slice of the Redis
# clock, as the claims: ``c:{ttl}:{slice}:{shard}``, a slice lasting a quarter of the set's TTL, so
# a field written in slice s stays until s ends plus the TTL (1 to 1.25 TTLs, never less than the
# zset's EXPIRE) and is looked up in slices s-4 to s. The field is the key without the prefix, the
# value a MessagePack array of score, member, member..., score, member... The set is promoted to its
# own zset when a member it does not hold arrives (or more than SMALL_SET would), with the
# same trims as the zset. COMPACT_SHARDS keeps 1M fields at ~60 a hash: listpacks while values
# stay within 64 B (a code's redeemer triple with an IPv4 address is ~45 B; IPv6 may exceed it
# and turn its hash into a hashtable), no Redis configuration needed.
COMPACT_SHARDS = 16384

# Shared by the apply and read scripts: the names of the hashes a compact set may live in, newest
# first, less the shard (built once per TTL and script call, not per set), and the time the
# newest expires at; its members as a table (member -> score), their count and the slice found in
# (nil for a zset).
_COMPACT_LUA = """
local now_s = tonumber(redis.call('TIME')[1])
local names = {}  -- per TTL: the five slices' hash name prefixes, newest first, and their end
local function slices(cprefix, ttl)
  local got = names[ttl]
  if got == nil then
    local w = math.ceil(ttl / 4)
    local s = math.floor(now_s / w)
    got = {}
    for x = s, s - 4, -1 do got[#got + 1] = cprefix .. ttl .. ':' .. x .. ':' end
    got.until_ts = (s + 1) * w + ttl
    names[ttl] = got
  end
  return got
end
-- A set is either compact or a zset, never both (promotion deletes the field); a zset gives nil.
-- Each look is a call (1-2 us in a script): a set written once per batch is most often compact,
-- in the newest slice, so its key is looked for after that slice (`hot` false); a set with
-- several members in a batch is most often a zset, looked for first.
local function compact_get(hs, shard, field, key, hot)
  for x = 1, #hs do
    if x == (hot and 1 or 2) and redis.call('EXISTS', key) == 1 then return nil end
    local v = redis.call('HGET', hs[x] .. shard, field)
    if v then
      local t, cur, n, score = cmsgpack.unpack(v), {}, 0, 0
      for j = 1, #t do
        if type(t[j]) == 'number' then score = t[j] else cur[t[j]] = score; n = n + 1 end
      end
      return cur, n, x
    end
  end
  return {}, 0, nil
end
"""

# One call per batch, one round trip: the offsets check (a writer that is not where the store is
# writes nothing), the delta and the progress, atomically (a script runs alone, as MULTI/EXEC).
# ARGV[1]: one JSON array (not an argument per item: the client encodes and Redis copies a batch's
# ten thousand arguments one by one, JSON decodes in C) of
# n_checks, (offset_key, expected or '' for none stored)*, n_sets, (key, value)*,
#       key prefix, compact hash prefix, default_ttl, n_counters, (key, field, by)*,
#       n_zsets, (key, ttl, cap, compact shard or '', n, (score, member)*)*,
#       dirty_key, n_dirty, member*, n_gated, (member, set key, least)*.
# Returns {0, gated member added to dirty*} when applied, else {index of the stale check, offset
# stored there or ''}.
_APPLY_LUA = (
    _COMPACT_LUA
    + """
local A = cjson.decode(ARGV[1])
local i = 1
local n = tonumber(A[i]); i = i + 1
for c = 1, n do
  local have = redis.call('GET', A[i]) or ''
  if have ~= A[i + 1] then return {c, have} end
  i = i + 2
end
n = tonumber(A[i]); i = i + 1
for _ = 1, n do
  redis.call('SET', A[i], A[i + 1])
  i = i + 2
end
local prefix, cprefix = A[i], A[i + 1]; i = i + 2
local ttl = tonumber(A[i]); i = i + 1
n = tonumber(A[i]); i = i + 1
local hashes = {}
for _ = 1, n do
  redis.call('HINCRBYFLOAT', A[i], A[i + 1], A[i + 2])
  hashes[A[i]] = true
  i = i + 3
end
for key, _ in pairs(hashes) do redis.call('EXPIRE', key, ttl) end
local sizes = {}  -- compact sets written: their member counts
n = tonumber(A[i]); i = i + 1
for _ = 1, n do
  local key, kttl = A[i], tonumber(A[i + 1])
  local cap, shard, m = tonumber(A[i + 2]), A[i + 3], tonumber(A[i + 4])
  i = i + 5
  local batch = {}
  for j = 0, m - 1 do batch[#batch + 1] = {tonumber(A[i + 2 * j]), A[i + 2 * j + 1]} end
  i = i + 2 * m
  local hs, field, cur, size, at
  if shard ~= '' then
    hs, field = slices(cprefix, kttl), string.sub(key, #prefix + 1)
    cur, size, at = compact_get(hs, shard, field, key, m > 1)
  end
  if cur then
    local grown = false
    for _, sm in ipairs(batch) do
      local had = cur[sm[2]]
      if had == nil then
        grown = grown or at ~= nil
        size = size + 1
        cur[sm[2]] = sm[1]
      elseif sm[1] > had then
        cur[sm[2]] = sm[1]
      end
    end
    local keep = not grown and size <= math.min(cap, COMPACT)
    if at and (at > 1 or not keep) then redis.call('HDEL', hs[at] .. shard, field) end
    if keep then
      -- Trim relative to the newest member, as the zset below.
      local latest = -math.huge
      for _, sc in pairs(cur) do if sc > latest then latest = sc end end
      local packed, by = {}, {}
      size = 0
      for mem, sc in pairs(cur) do
        if sc >= latest - kttl then
          local mems = by[sc]
          if mems == nil then mems = {}; by[sc] = mems end
          mems[#mems + 1] = mem
          size = size + 1
        end
      end
      for sc, mems in pairs(by) do
        packed[#packed + 1] = sc
        for _, mem in ipairs(mems) do packed[#packed + 1] = mem end
      end
      redis.call('HSET', hs[1] .. shard, field, cmsgpack.pack(packed))
      -- Found in the newest slice: its hash exists, with this very expiry.
      if at ~= 1 then redis.call('EXPIREAT', hs[1] .. shard, hs.until_ts) end
      sizes[key] = size
      batch = nil
    else
      batch = {}  -- promoted: the zset gets the compact members too
      for mem, sc in pairs(cur) do batch[#batch + 1] = {sc, mem} end
    end
  end
  if batch then
    local args, latest = {'ZADD', key, 'GT'}, -math.huge
    for _, sm in ipairs(batch) do
      if sm[1] > latest then latest = sm[1] end
      args[#args + 1] = string.format('%.17g', sm[1])
      args[#args + 1] = sm[2]
      if #args >= 2003 then  -- unpack() has a stack limit: add in chunks
        redis.call(unpack(args))
        args = {'ZADD', key, 'GT'}
      end
    end
    if #args > 3 then redis.call(unpack(args)) end
    -- Trim relative to the set's newest member, not the batch's: the same set whatever order
    -- batches arrive in (instances of a group apply one bucket's partitions in any order).
    local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')[2]
    if top and tonumber(top) > latest then latest = tonumber(top) end
    redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. string.format('%.17g', latest - kttl))
    redis.call('ZREMRANGEBYRANK', key, 0, -cap - 1)
    redis.call('EXPIRE', key, kttl)
  end
end
local dirty = A[i]
n = tonumber(A[i + 1]); i = i + 2
for _ = 1, n do redis.call('SADD', dirty, A[i]); i = i + 1 end
n = tonumber(A[i]); i = i + 1
local passed = {0}
for _ = 1, n do
  local key, least = A[i + 1], tonumber(A[i + 2])
  local size = sizes[key] or redis.call('ZCARD', key)
  if size >= least then
    redis.call('SADD', dirty, A[i])
    passed[#passed + 1] = A[i]
  end
  i = i + 3
end
return passed
"""
).replace("COMPACT)", f"{SMALL_SET})")

# Claims live in hashes per (time slice of the Redis clock, shard of the event id), instead of one
# key with its own TTL per event: a slice's hashes expire together, and the claims of one batch are
# grouped by shard (one HMGET per slice and one HSET per shard touched, not a call per event).
# A slice lasts a quarter of the dedupe horizon; a claim written in slice s stays until s ends plus
# the horizon (1 to 1.25 horizons), so it is looked up in slices s-4 to s.
# ARGV: key prefix, slice_s, horizon_s, n_groups, (shard, claims)*: a group's claims are one
# string of 22-byte records (14-byte event digest, 8-byte position digest), not two arguments a
# claim (the client encodes and Redis copies each argument on its own).
# Returns, group after group, 1 where the event is new (or claimed by this very position), else 0.
_CLAIM_LUA = """
local prefix, w, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local slice = math.floor(tonumber(redis.call('TIME')[1]) / w)
local slices = {}
for s = slice, slice - math.ceil(ttl / w), -1 do slices[#slices + 1] = prefix .. s .. ':' end
local until_ts = (slice + 1) * w + ttl
local out = {}
local i = 5
for _ = 1, tonumber(ARGV[4]) do
  local shard, blob = ARGV[i], ARGV[i + 1]
  i = i + 2
  local n = #blob / 22
  local ids, poss = {}, {}
  for c = 1, n do
    local o = 22 * c - 21
    ids[c] = string.sub(blob, o, o + 13)
    poss[c] = string.sub(blob, o + 14, o + 21)
  end
  local held = {}
  for s = #slices, 1, -1 do  -- oldest first: a newer slice's claim wins
    local got = redis.call('HMGET', slices[s] .. shard, unpack(ids))
    for c = 1, n do held[c] = got[c] or held[c] end
  end
  local new, add = {}, {'HSET', slices[1] .. shard}
  for c = 1, n do
    local id, pos = ids[c], poss[c]
    local h = held[c] or new[id] or false
    if h == false then
      new[id] = pos
      add[#add + 1] = id
      add[#add + 1] = pos
    end
    out[#out + 1] = (h == false or h == pos) and 1 or 0
  end
  if #add > 2 then
    redis.call(unpack(add))
    redis.call('EXPIREAT', slices[1] .. shard, until_ts)
  end
end
return out
"""

# One round trip and one reply for every read of a slice (a pipeline costs the client a command
# object and a reply callback per key). ARGV: n_fields, (key, n, field*)*, n_counts,
# (key, '(' .. since)*, key prefix, compact hash prefix, n_members,
# (key, since, compact shard or '', ttl)*, n_hashes, key*. A compact set's members are read from
# its field when it has no key.
_READ_LUA = (
    "#!lua flags=no-writes\n"
    + _COMPACT_LUA
    + """
local out, i = {}, 1
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local key, m = ARGV[i], tonumber(ARGV[i + 1])
  out[#out + 1] = m > 0 and redis.call('HMGET', key, unpack(ARGV, i + 2, i + 1 + m)) or {}
  i = i + 2 + m
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  out[#out + 1] = redis.call('ZCOUNT', ARGV[i], ARGV[i + 1], '+inf')
  i = i + 2
end
local prefix, cprefix = ARGV[i], ARGV[i + 1]; i = i + 2
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local key, since, shard = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  -- Sets read passed the gate (enough members): most often zsets.
  local hs = shard ~= '' and slices(cprefix, tonumber(ARGV[i + 3]))
  local cur = hs and compact_get(hs, shard, string.sub(key, #prefix + 1), key, true)
  if not cur then
    out[#out + 1] = redis.call('ZRANGEBYSCORE', key, '(' .. since, '+inf', 'WITHSCORES')
  else
    local rows, after = {}, tonumber(since)
    for mem, sc in pairs(cur) do
      if sc > after then
        rows[#rows + 1] = mem
        rows[#rows + 1] = string.format('%.17g', sc)
      end
    end
    out[#out + 1] = rows
  end
  i = i + 4
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  out[#out + 1] = redis.call('HGETALL', ARGV[i])
  i = i + 1
end
return out
"""
)

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def connect(cfg: RedisConfig) -> redis.Redis:
    """A client from config; the password comes from a SecretStr and is never logged."""
    kwargs: dict[str, Any] = {
        "socket_timeout": cfg.socket_timeout_s,
        "socket_connect_timeout": cfg.socket_timeout_s,
        "health_check_interval": 10,
    }
    if cfg.username:
        kwargs["username"] = cfg.username
    if cfg.password is not None:
        kwargs["password"] = cfg.password.get_secret_value()
    if cfg.url.startswith("rediss://"):
        if cfg.ssl_ca_certs:
            kwargs["ssl_ca_certs"] = cfg.ssl_ca_certs
        if cfg.ssl_certfile:
            kwargs["ssl_certfile"] = cfg.ssl_certfile
        if cfg.ssl_keyfile:
            kwargs["ssl_keyfile"] = cfg.ssl_keyfile
    return redis.Redis.from_url(cfg.url, **kwargs)


def _digest(s: str, size: int) -> bytes:
    return hashlib.blake2b(s.encode(), digest_size=size).digest()


def _num(v: bytes | None) -> float:
    return float(v) if v is not None else 0.0


def _pairs(flat: list[bytes], key: Callable[[bytes], str]) -> list[tuple[str, float]]:
    """``[k1, v1, k2, v2, ...]`` (a WITHSCORES or HGETALL reply) as ``[(k1, v1), ...]``."""
    return [(key(flat[j]), float(flat[j + 1])) for j in range(0, len(flat), 2)]


def _str(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _bytes(v: bytes | str) -> bytes:
    return v if isinstance(v, bytes) else v.encode()


class RedisStore:
    def __init__(
        self, client: redis.Redis, keys: Keys, ttl_s: float, observe: Observer | None = None
    ) -> None:
        self._r = client
        self._keys = keys
        self._ttl = max(1, int(ttl_s))
        self._observe = observe
        self._commit = client.register_script(_COMMIT_LUA)
        self._lease = client.register_script(_LEASE_LUA)
        self._release = client.register_script(_RELEASE_LUA)
        self._apply = client.register_script(_APPLY_LUA)
        self._claim = client.register_script(_CLAIM_LUA)
        self._read = client.register_script(_READ_LUA)

    @contextmanager
    def _op(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        except StaleProgress:
            self._report(name, t0, ok=True)
            raise
        except redis.AuthenticationError as e:
            self._report(name, t0, ok=False)
            raise StoreError(f"Redis refused the credentials during {name}: {e}") from None
        except redis.RedisError as e:
            self._report(name, t0, ok=False)
            raise StoreError(f"Redis {name} failed: {type(e).__name__}: {e}") from None
        self._report(name, t0, ok=True)

    def _report(self, name: str, t0: float, *, ok: bool) -> None:
        if self._observe is not None:
            self._observe(name, time.perf_counter() - t0, ok)

    def ping(self) -> None:
        with self._op("ping"):
            self._r.ping()

    def claim(self, claims: Sequence[tuple[str, str]], ttl_s: float) -> list[bool]:
        if not claims:
            return []
        groups: dict[int, list[int]] = {}
        fields: list[bytes] = []
        for n, (event_id, pos) in enumerate(claims):
            d = _digest(event_id, 16)
            # The first 2 bytes pick the shard, the other 14 (112 bits) stand for the id.
            groups.setdefault(int.from_bytes(d[:2], "big") % CLAIM_SHARDS, []).append(n)
            fields.append(d[2:] + _digest(pos, 8))
        ttl = max(1, int(ttl_s))
        args: list[Any] = [self._keys.claims, max(1, -(-ttl // 4)), ttl, len(groups)]
        order: list[int] = []
        for shard, idx in groups.items():
            args += [shard, b"".join([fields[n] for n in idx])]
            order += idx
        with self._op("claim"):
            res = self._claim(args=args)
        out = [False] * len(claims)
        for n, flag in zip(order, res, strict=True):
            out[n] = bool(flag)
        return out

    def apply(self, delta: Delta, progress: Progress | None) -> set[str]:
        args: list[Any] = []
        parts: list[int] = []
        if progress is not None:
            k = self._keys
            parts = sorted(progress.expected)
            args.append(len(parts))
            for p in parts:
                want = progress.expected[p]
                args += [k.offsets(progress.source, p), "" if want is None else str(want)]
            args.append(len(progress.offsets) + len(progress.max_ts))
            for part, off in progress.offsets.items():
                args += [k.offsets(progress.source, part), str(off)]
            for part, ts in progress.max_ts.items():
                args += [k.max_ts(progress.source, part), repr(ts)]
        else:
            args += [0, 0]
        self._delta_args(args, delta)
        with self._op("apply"):
            res = self._apply(args=[orjson.dumps(args)])
        if res[0]:
            assert progress is not None
            p, have = parts[int(res[0]) - 1], _str(res[1])
            raise StaleProgress(
                f"partition {p} of {progress.source} is at offset {have or None}, not "
                f"{progress.expected[p]}: another writer applied it"
            )
        return {_str(m) for m in res[1:]}

    def _delta_args(self, args: list[Any], delta: Delta) -> None:
        args += [self._keys.prefix, self._keys.compact, self._ttl, len(delta.counters)]
        for (key, fld), by in delta.counters.items():
            args += [key, fld, repr(by)]
        args.append(len(delta.distinct))
        for key, members in delta.distinct.items():
            cap = delta.caps[key]
            items: Iterable[tuple[str, float]] = members.items()
            if len(members) > cap:
                # Only the newest `cap` can be left after the trim, in Redis's own order (score,
                # then member): the same set as adding all, without Redis adding and dropping the
                # rest (a campaign's last few ratios out of every redemption in the batch).
                items = heapq.nlargest(cap, items, key=lambda mt: (mt[1], mt[0]))
            ttl = self._set_ttl(delta.ttls.get(key))
            shard = self._shard(key) if key in delta.compact else ""
            args += [key, ttl, cap, shard, min(cap, len(members))]
            for m, ts in items:
                args += [ts, m]  # a JSON number: the same double in Lua
        args += [self._keys.dirty, len(delta.dirty), *delta.dirty, len(delta.gated)]
        for m, gate in delta.gated.items():
            args += [m, *gate]

    def _set_ttl(self, ttl: float | None) -> int:
        return self._ttl if ttl is None else max(1, int(ttl))

    def _shard(self, key: str) -> int:
        return zlib.crc32(key.encode()) % COMPACT_SHARDS

    def read(self, req: Read) -> ReadResult:
        if not (req.fields or req.counts or req.members or req.hashes):
            return ReadResult([], [], [], [])
        args: list[Any] = [len(req.fields)]
        for key, names in req.fields:
            args += [key, len(names), *names]
        args.append(len(req.counts))
        for key, since in req.counts:
            args += [key, f"({since}"]
        args += [self._keys.prefix, self._keys.compact, len(req.members)]
        for key, since in req.members:
            if key in req.compact:
                args += [key, since, self._shard(key), self._set_ttl(req.compact[key])]
            else:
                args += [key, since, "", 0]
        args.append(len(req.hashes))
        args += req.hashes
        with self._op("read"):
            out = self._read(args=args)
        nf, nc, nm = len(req.fields), len(req.counts), len(req.members)
        return ReadResult(
            fields=[[_num(v) for v in row] for row in out[:nf]],
            counts=[int(c) for c in out[nf : nf + nc]],
            members=[_pairs(row, _str) for row in out[nf + nc : nf + nc + nm]],
            hashes=[dict(_pairs(row, _str)) for row in out[nf + nc + nm :]],
        )

    def progress(self, source: str, partitions: Sequence[int]) -> Progress:
        parts = sorted(partitions)
        if not parts:
            return Progress(source)
        k = self._keys
        with self._op("progress"):
            offs = self._r.mget([k.offsets(source, p) for p in parts])
            mts = self._r.mget([k.max_ts(source, p) for p in parts])
        return Progress(
            source,
            {p: int(v) for p, v in zip(parts, offs, strict=True) if v is not None},
            {p: float(v) for p, v in zip(parts, mts, strict=True) if v is not None},
        )

    def exchange_clock(self, source: str, mine: dict[int, bytes]) -> dict[int, bytes]:
        key = self._keys.group_clock(source)
        with self._op("clock"):
            pipe = self._r.pipeline(transaction=False)
            if mine:
                pipe.hset(key, mapping={str(p): v for p, v in mine.items()})
            pipe.hgetall(key)
            everyone = pipe.execute()[-1]
        return {int(p): _bytes(v) for p, v in everyone.items()}

    def dirty(self) -> set[str]:
        with self._op("dirty"):
            return {_str(m) for m in self._r.smembers(self._keys.dirty)}

    def alert_states(self) -> dict[str, bytes]:
        with self._op("alert_states"):
            return {_str(k): _bytes(v) for k, v in self._r.hgetall(self._keys.alerts).items()}

    def commit(self, c: Commit) -> list[bool]:
        k = self._keys
        args: list[Any] = [c.lease_owner or "", len(c.changes)]
        for ch in c.changes:
            args += [ch.name, "1" if ch.expected is not None else "0", ch.expected or b""]
            args += ["1" if ch.new is not None else "0", ch.new or b""]
            args += ["1" if ch.outbox is not None else "0", ch.outbox or b""]
        args.append(len(c.snapshots))
        for name, blob in c.snapshots.items():
            args += [name, blob]
        args.append(len(c.clean))
        args += sorted(c.clean)
        keys = [k.alerts, k.outbox, k.models, k.lease("models"), k.dirty, k.outbox + ":seq"]
        with self._op("commit"):
            pipe = self._r.pipeline(transaction=True)
            self._commit(keys=keys, args=args, client=pipe)
            if len(c.marks) or c.marks.dirty:
                marks: list[Any] = [0, 0]
                self._delta_args(marks, c.marks)
                self._apply(args=[orjson.dumps(marks)], client=pipe)
            res = pipe.execute()[0]
        return [bool(x) for x in res]

    def outbox(self) -> list[tuple[str, bytes]]:
        with self._op("outbox"):
            items = self._r.hgetall(self._keys.outbox)
        return sorted((_str(k), _bytes(v)) for k, v in items.items())

    def ack_outbox(self, ids: Sequence[str]) -> None:
        if ids:
            with self._op("ack_outbox"):
                self._r.hdel(self._keys.outbox, *ids)

    def snapshots(self, names: Sequence[str] | None = None) -> dict[str, bytes]:
        if names is None:
            with self._op("snapshots"):
                every = self._r.hgetall(self._keys.models)
            return {_str(n): _bytes(v) for n, v in every.items()}
        if not names:
            return {}
        with self._op("snapshots"):
            vals = self._r.hmget(self._keys.models, list(names))
        return {n: _bytes(v) for n, v in zip(names, vals, strict=True) if v is not None}

    def try_lease(self, name: str, owner: str, ttl_s: float) -> bool:
        with self._op("lease"):
            return bool(self._lease(keys=[self._keys.lease(name)], args=[owner, int(ttl_s * 1000)]))

    def release_lease(self, name: str, owner: str) -> None:
        with self._op("lease"):
            self._release(keys=[self._keys.lease(name)], args=[owner])

    def close(self) -> None:
        self._r.close()
