-- Reading the audit trail: recent executions across a tenant's agents,
-- one execution in full, and the hash chain's verification. An execution
-- id is the agent's own: the same id chosen by two agents is two
-- executions (grouped by agent and id).
local loop = require("core.loop")
local json = require("switchboard.json")
local directory = require("switchboard.directory")
local store = require("switchboard.store.audit")
local agents_store = require("switchboard.store.agents")
local time = require("switchboard.time")

local M = {}

M.DEFAULT_DAYS = 7
M.MAX_DAYS = 30

local function call_view(r)
  return { id = r.id, at = r.at, tool = r.tool, action = r.action, decision = r.decision,
           outcome = r.outcome, duration_ms = r.duration_ms, sender_tier = r.sender_tier,
           retries = r.retries, actor = r.actor, params = r.params, policies = r.policies, detail = r.detail }
end

-- The executions of one page: the calls of a tenant are walked newest
-- first (keyset on id, in batches that yield to the loop) between a floor
-- (the first call of the window) and a top (the last call when the first
-- page was asked: later calls wait for a new listing, so pages neither
-- repeat nor skip an execution while calls are added). An execution is
-- listed where its last call up to the top is; one with a call above the
-- current row was listed on an earlier page. At most M.SCAN calls are
-- walked per page (a page of long executions may hold fewer).
M.BATCH = 256
M.SCAN = 4096
M.CALLS = 20        -- the last calls shown per execution in a list

-- One page: the executions whose last call up to top is below after (and
-- at or above floor), at most limit of them; returns them and the id to
-- go on from (nil at the floor). yield (optional) runs between batches.
function M.page(db, tenant_id, top, floor, after, limit, yield)
  local out, seen, names, scanned, pos = {}, {}, {}, 0, after
  while true do
    local rows = assert(store.walk(db, tenant_id, pos, floor, M.BATCH))
    local full = false
    for _, r in ipairs(rows) do
      pos, scanned = r.id, scanned + 1
      local key = ("%s\0%s"):format(tostring(r.agent_id), tostring(r.execution_id))
      if not seen[key] then
        seen[key] = true
        -- its calls between r.id and after would have been walked on this
        -- page already: only one from after up to top can be later (none
        -- on the first page, which starts above top)
        if after > top or not store.called_later(db, tenant_id, r.execution_id, r.agent_id, after - 1, top) then
          out[#out + 1] = M.summary(db, tenant_id, r, floor, names)
        end
      end
      full = #out >= limit or scanned >= M.SCAN
      if full then break end
    end
    if full then return out, pos end
    if #rows < M.BATCH then return out, nil end     -- the floor was reached
    if yield then yield() end
  end
end

-- An execution in a list: its last calls up to its row r.
function M.summary(db, tenant_id, r, floor, names)
  local calls = assert(store.execution_tail(db, tenant_id, r.execution_id, r.agent_id, floor, r.id, M.CALLS + 1))
  local more = #calls > M.CALLS
  local shown = {}
  for i = math.min(#calls, M.CALLS), 1, -1 do
    local c = calls[i]
    shown[#shown + 1] = { tool = c.tool, action = c.action, duration_ms = c.duration_ms, outcome = c.outcome,
                          decision = c.decision }
  end
  local started_at = more and store.execution_start(db, tenant_id, r.execution_id, r.agent_id, floor)
    or (calls[#calls] and calls[#calls].at)
  if r.agent_id and names[r.agent_id] == nil then
    names[r.agent_id] = agents_store.name(db, r.agent_id) or false
  end
  return { id = r.execution_id, agent = r.agent_id and names[r.agent_id] or nil, started_at = started_at,
           ended_at = calls[1].at, calls = json.array(shown), more_calls = more or nil }
end

function M.install(admin)
  local refuse, methods = admin.refuse, admin.methods

  methods["executions.list"] = function(self, p)
    local t = self:tenant(p, "executions")
    local limit = admin.page_limit(p, "executions")
    local top, floor, after = admin.read_cursor(p, "ex1", 3, "executions")
    local days
    if not top then
      days = p.days == nil and M.DEFAULT_DAYS or math.tointeger(tonumber(p.days))
      if not days or days < 1 then refuse("executions: --days must be a whole number of days from 1", -32602) end
      if days > M.MAX_DAYS then
        refuse(("executions: --days %d is over the limit: the lookback is at most %d days"):format(days, M.MAX_DAYS),
          -32602)
      end
      local since = time.iso(time.unix() - days * 86400)
      top = store.last_call(self.db, t.id) or 0
      floor = store.first_since(self.db, t.id, since) or top + 1
      after = top + 1
    end
    local out, pos = M.page(self.db, t.id, top, floor, after, limit, function() loop.sleep(0) end)
    return { tenant = t.name, days = days, executions = json.array(out),
             next = pos and admin.cursor("ex1", top, floor, pos) or json.null }
  end

  -- One execution's calls in full, oldest first, a page at a time
  -- (default 500 calls; cursor "xs1-<id>").
  methods["execution.show"] = function(self, p)
    local t = self:tenant(p, "execution show")
    if type(p.id) ~= "string" or p.id == "" then refuse("execution show: give the execution id", -32602) end
    if p.agent ~= nil and (type(p.agent) ~= "string" or p.agent == "") then
      refuse("execution show: 'agent' must be an agent's name", -32602)
    end
    local limit = admin.page_limit(p, "execution show", 500, 1000)
    local after = admin.read_cursor(p, "xs1", 1, "execution show") or 0
    local db = self.db
    local function none()
      refuse(("no execution '%s'%s in tenant '%s'"):format(p.id,
        p.agent and (" of agent '" .. p.agent .. "'") or "", t.name))
    end
    local agent_id
    if p.agent then
      local a = directory.agent(db, t.id, p.agent)
      if not a then none() end
      agent_id = a.id
      if not store.execution_start(db, t.id, p.id, agent_id, 0) then none() end
    else
      local found, lo, hi = store.execution_agents(db, t.id, p.id)
      if not found then none() end
      if lo ~= hi then
        -- each agent's id is its own: the same id of two agents is not one execution
        local names = {}
        for _, r in ipairs(assert(store.execution_agent_names(db, t.id, p.id, 10))) do
          names[#names + 1] = r.name or tostring(r.agent_id)
        end
        refuse(("execution '%s' is the id of executions of several agents (%s): add --agent NAME to show one")
          :format(p.id, table.concat(names, ", ")), -32602)
      end
      agent_id = lo
    end
    local rows = assert(store.execution_calls(db, t.id, p.id, agent_id, after, limit + 1))
    local calls, bytes, more = {}, 0, #rows > limit
    for i = 1, math.min(#rows, limit) do
      local r = rows[i]
      bytes = bytes + r.bytes
      if i > 1 and bytes > admin.PAGE_BYTES then more = true break end
      calls[i] = call_view(r)
    end
    local a = agent_id and agents_store.name(db, agent_id)
    return { tenant = t.name, id = p.id, agent = a or nil, calls = json.array(calls),
             next = more and admin.cursor("xs1", calls[#calls].id) or json.null }
  end

  -- The trail from the verified checkpoint (p.full: from record 1), in
  -- slices that yield to the loop; with p.progress, notifications
  -- "audit.verify/progress" { checked, total, elapsed } come first, at
  -- most five a second.
  methods["audit.verify"] = function(self, p, ctx)
    local progress
    if p.progress == true and ctx.notify then
      local t0, last = loop.time(), nil
      progress = function(checked, total)
        local now = loop.time()
        if last and now - last < 0.2 and checked < total then return end
        last = now
        ctx.notify("audit.verify/progress", { checked = checked, total = total, elapsed = now - t0 })
      end
    end
    local r, err = self.server.audit:verify({ incremental = p.full ~= true, progress = progress,
                                              yield = function() loop.sleep(0) end, checkpoint_later = true })
    if not r then refuse(err) end
    if r.warnings then r.warnings = json.array(r.warnings) end
    if r.notes then r.notes = json.array(r.notes) end
    r.last_hash = nil
    return r
  end

  methods["audit.settings"] = function(self, p)
    local t = self:tenant(p, "audit settings")
    local limit = admin.page_limit(p, "audit settings")
    local after = admin.read_cursor(p, "st1", 1, "audit settings") or math.maxinteger
    local rows = assert(store.settings(self.db, t.id, after, limit + 1))
    local out, bytes, more = {}, 0, #rows > limit
    for i = 1, math.min(#rows, limit) do
      local r = rows[i]
      bytes = bytes + r.bytes
      if i > 1 and bytes > admin.PAGE_BYTES then more = true break end
      out[i] = { id = r.id, at = r.at, actor = r.actor, action = r.action, old = r.old, new = r.new }
    end
    return { tenant = t.name, changes = json.array(out),
             next = more and admin.cursor("st1", out[#out].id) or json.null }
  end
end

return M
