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

-- The run whose budget a run's model calls charge: today a run charges its own. Runs
-- started by runs (sub-graphs, map items) name their root run here, the one place.
function Budget.root(gid) return gid end

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
    redis.call('HINCRBY', nk, node .. ':' .. USAGE.INPUT, int(t[4]))
    redis.call('HINCRBY', nk, node .. ':' .. USAGE.OUTPUT, int(t[5]))
    redis.call('HINCRBYFLOAT', nk, node .. ':' .. USAGE.COST, t[6])
    redis.call('HINCRBY', rk, USAGE.INPUT, int(t[4]))
    redis.call('HINCRBY', rk, USAGE.OUTPUT, int(t[5]))
    redis.call('HINCRBYFLOAT', rk, USAGE.COST, t[6])
  end
end

-- {limits, used + held} of the run: {max tokens, max cost, tokens, cost}.
function Budget.levels(rk)
  local m = redis.call('HMGET', rk, META.MAX_TOKENS, META.MAX_COST, USAGE.INPUT, USAGE.OUTPUT,
    USAGE.COST, META.RESERVED_TOKENS, META.RESERVED_COST)
  return {tonumber(m[1]) or 0, tonumber(m[2]) or 0,
    (tonumber(m[3]) or 0) + (tonumber(m[4]) or 0) + math.max(0, tonumber(m[6]) or 0),
    (tonumber(m[5]) or 0) + math.max(0, tonumber(m[7]) or 0)}
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
