-- Run budgets (docs/limits.md, "Budgets"). Before each model call the worker reserves the
-- call's worst case against the run's max_tokens and max_cost_usd (reserve.lua); after it,
-- the reservation is reconciled to what the call used (reconcile.lua). What a node's
-- running execution holds is kept with the node (BUDGET.HOLD: execution, tokens and cost
-- reserved and not yet reconciled, then the reconciled input, output and cost) and summed
-- in the run's META.RESERVED_TOKENS / RESERVED_COST; a reservation must fit next to the
-- run's usage plus everything held. The hold ends with its execution: released when the
-- result is applied (the result carries the usage), or when a later execution of the node
-- starts or the node is parked (the execution never reports: what it reconciled is counted
-- as used then, so a dead worker's calls are not lost).

-- The run whose budget a run's model calls charge: its root run (META.ROOT, set by spawn
-- for a child run: the run a client submitted that it descends from), else its own. The
-- root's meta hash holds the holds of every call of its tree (META.RESERVED_*), the usage
-- its descendants' applied attempts spent and that has not rolled up into its own yet
-- (META.DESC_*), its paused flag and its parked nodes. Children live on their parent's
-- shard (one hash slot), so the root's keys are the call's to touch.
function Budget.root(gid)
  return redis.call('HGET', gkey(gid), META.ROOT) or gid
end

-- Usage (tokens, cost) added to run `gid`'s own counters, kept in step on its root:
-- a descendant's spend counts against the root at once (META.DESC_*); usage that rolls up
-- from a child into a parent (`rolled`: a subgraph node's or graph-bodied map item's result
-- carries its child's usage) was counted when it was spent, so it moves nothing until it
-- reaches the root's own usage, where it leaves META.DESC_* (counted once throughout).
function Budget.spent(gid, rolled, tokens, cost)
  if tokens == 0 and cost == 0 then return end
  local root = Budget.root(gid)
  local sign
  if root ~= gid then
    if rolled then return end
    sign = 1
  elseif rolled then
    sign = -1
  else
    return
  end
  local rk = gkey(root)
  redis.call('HINCRBY', rk, META.DESC_TOKENS, int(sign * tokens))
  redis.call('HINCRBYFLOAT', rk, META.DESC_COST, sign * cost)
end

-- Parses a hold: {execution, reserved tokens, reserved cost, input, output, cost}.
function Budget.hold(h)
  local t = {}
  for x in string.gmatch(h, '[^,]+') do t[#t + 1] = x end
  for k = 2, 6 do t[k] = tonumber(t[k]) or 0 end
  return t
end

-- Ends what node `node` holds of its run's budget. `commit`: its reconciled usage is added
-- to the node's and the run's usage (an execution that will never report it).
function Budget.release(gid, node, commit)
  local nk, f = nkey(gid), node .. BUDGET.HOLD
  local h = redis.call('HGET', nk, f)
  if not h then return end
  redis.call('HDEL', nk, f)
  local t = Budget.hold(h)
  local rk = gkey(Budget.root(gid))
  -- int(): Lua writes -0 as '-0', which HINCRBY refuses.
  redis.call('HINCRBY', rk, META.RESERVED_TOKENS, int(-(t[2] + t[4] + t[5])))
  redis.call('HINCRBYFLOAT', rk, META.RESERVED_COST, -(t[3] + t[6]))
  if commit and (t[4] + t[5] > 0 or t[6] > 0) then
    local gk = gkey(gid)
    redis.call('HINCRBY', nk, node .. ':' .. USAGE.INPUT, int(t[4]))
    redis.call('HINCRBY', nk, node .. ':' .. USAGE.OUTPUT, int(t[5]))
    redis.call('HINCRBYFLOAT', nk, node .. ':' .. USAGE.COST, t[6])
    redis.call('HINCRBY', gk, USAGE.INPUT, int(t[4]))
    redis.call('HINCRBY', gk, USAGE.OUTPUT, int(t[5]))
    redis.call('HINCRBYFLOAT', gk, USAGE.COST, t[6])
    Budget.spent(gid, false, t[4] + t[5], t[6])
  end
end

-- {limits, used + held} of a root run (its descendants' spend not rolled up yet included):
-- {max tokens, max cost, tokens, cost}.
function Budget.levels(rk)
  local m = redis.call('HMGET', rk, META.MAX_TOKENS, META.MAX_COST, USAGE.INPUT, USAGE.OUTPUT,
    USAGE.COST, META.RESERVED_TOKENS, META.RESERVED_COST, META.DESC_TOKENS, META.DESC_COST)
  return {tonumber(m[1]) or 0, tonumber(m[2]) or 0,
    (tonumber(m[3]) or 0) + (tonumber(m[4]) or 0) + math.max(0, tonumber(m[6]) or 0)
      + math.max(0, tonumber(m[8]) or 0),
    (tonumber(m[5]) or 0) + math.max(0, tonumber(m[7]) or 0) + math.max(0, tonumber(m[9]) or 0)}
end

-- A paused run leaves the listing of running runs for that of paused ones, and back
-- (its stored state stays RUNNING: see schema.Meta.PAUSED).
function Budget.index_pause(gid, paused)
  if paused then index_move(gid, GraphState.RUNNING, GraphState.PAUSED)
  else index_move(gid, GraphState.PAUSED, GraphState.RUNNING) end
end

-- A run ends: a paused one is no longer listed as paused (end_graph moved it from RUNNING).
function Budget.ended(gid)
  local gk = gkey(gid)
  if redis.call('HGET', gk, META.PAUSED) == '1' then
    local v = redis.call('HMGET', gk, META.NAMESPACE)
    redis.call('ZREM', nsindex(v[1]) .. ':' .. GraphState.PAUSED, gid)
    redis.call('HDEL', gk, META.PAUSED, META.PARKED)
    redis.call('HINCRBY', K_STATS, STATS.PAUSED, -1)
  end
end
