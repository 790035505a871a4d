-- Reading the audit trail: recent executions across a tenant's agents,
-- one execution in full, and the hash chain's verification. An execution
-- id is the agent's own: the same id chosen by two agents is two
-- executions (grouped by agent and id).
local json = require("switchboard.json")

local M = {}

M.DEFAULT_DAYS = 7
M.MAX_DAYS = 30

local function call_view(r)
  return { id = r.id, at = r.at, tool = r.tool, action = r.action, decision = r.decision,
           outcome = r.outcome, duration_ms = r.duration_ms, sender_tier = r.sender_tier,
           retries = r.retries, actor = r.actor, params = json.decode(r.params or "{}"),
           policies = json.decode(r.policies or "[]"), detail = r.detail and json.decode(r.detail) or nil }
end

function M.install(admin)
  local refuse, methods = admin.refuse, admin.methods

  methods["executions.list"] = function(self, p)
    local t = self:tenant(p, "executions")
    local days = p.days == nil and M.DEFAULT_DAYS or math.tointeger(tonumber(p.days))
    if not days or days < 1 then refuse("executions: --days must be a whole number of days from 1", -32602) end
    if days > M.MAX_DAYS then
      refuse(("executions: --days %d is over the limit: the lookback is at most %d days"):format(days, M.MAX_DAYS),
        -32602)
    end
    local since = os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() - days * 86400)
    local rows = assert(self.db:query("SELECT l.*, a.name AS agent_name FROM audit_log l"
      .. " LEFT JOIN agents a ON a.id = l.agent_id WHERE l.kind = 'call' AND l.tenant_id = ? AND l.at >= ?"
      .. " ORDER BY l.id", t.id, since))
    local by_id, order = {}, {}
    for _, r in ipairs(rows) do
      local key = ("%s\0%s"):format(tostring(r.agent_id), tostring(r.execution_id))
      local e = by_id[key]
      if not e then
        e = { id = r.execution_id, agent = r.agent_name, started_at = r.at, calls = {} }
        by_id[key] = e
        order[#order + 1] = e
      end
      e.ended_at = r.at
      e.calls[#e.calls + 1] = { tool = r.tool, action = r.action, duration_ms = r.duration_ms,
                                outcome = r.outcome, decision = r.decision }
    end
    local out = {}
    for i = #order, 1, -1 do
      local e = order[i]
      e.calls = json.array(e.calls)
      out[#out + 1] = e
    end
    return { tenant = t.name, days = days, executions = json.array(out) }
  end

  methods["execution.show"] = function(self, p)
    local t = self:tenant(p, "execution show")
    if type(p.id) ~= "string" or p.id == "" then refuse("execution show: give the execution id", -32602) end
    if p.agent ~= nil and (type(p.agent) ~= "string" or p.agent == "") then
      refuse("execution show: 'agent' must be an agent's name", -32602)
    end
    local rows = assert(self.db:query("SELECT l.*, a.name AS agent_name FROM audit_log l"
      .. " LEFT JOIN agents a ON a.id = l.agent_id WHERE l.kind = 'call' AND l.tenant_id = ?"
      .. " AND l.execution_id = ? AND (? IS NULL OR a.name = ?) ORDER BY l.id", t.id, p.id, p.agent, p.agent))
    if #rows == 0 then
      refuse(("no execution '%s'%s in tenant '%s'"):format(p.id,
        p.agent and (" of agent '" .. p.agent .. "'") or "", t.name))
    end
    -- each agent's id is its own: the same id of two agents is not one execution
    local agents, seen = {}, {}
    for _, r in ipairs(rows) do
      local name = r.agent_name or tostring(r.agent_id)
      if not seen[name] then seen[name] = true; agents[#agents + 1] = name end
    end
    if #agents > 1 then
      refuse(("execution '%s' is the id of executions of several agents (%s): add --agent NAME to show one")
        :format(p.id, table.concat(agents, ", ")), -32602)
    end
    local calls = {}
    for i, r in ipairs(rows) do calls[i] = call_view(r) end
    return { tenant = t.name, id = p.id, agent = rows[1].agent_name, calls = json.array(calls) }
  end

  methods["audit.verify"] = function(self)
    local r = self.server.audit:verify()
    if r.warnings then r.warnings = json.array(r.warnings) end
    return r
  end

  methods["audit.settings"] = function(self, p)
    local t = self:tenant(p, "audit settings")
    local rows = assert(self.db:query("SELECT id, at, actor, action, params FROM audit_log"
      .. " WHERE kind = 'setting' AND tenant_id = ? ORDER BY id DESC LIMIT 200", t.id))
    local out = {}
    for i, r in ipairs(rows) do
      local v = json.decode(r.params or "{}") or {}
      out[i] = { id = r.id, at = r.at, actor = r.actor, action = r.action, old = v.old, new = v.new }
    end
    return { tenant = t.name, changes = json.array(out) }
  end
end

return M
