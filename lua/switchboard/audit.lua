-- The audit log of tool calls: one record per tools/call, whatever its
-- end. Records are queued and committed together (group commit) a few
-- milliseconds later, so the fsync of synchronous=FULL is paid once per
-- batch, not once per call; shutdown flushes what is queued.
local loop = require("core.loop")
local vault = require("core.vault")
local json = require("switchboard.json")
local log = require("switchboard.log")

local M = {}
M.__index = M

local SECRET_KEY = { secret = true, token = true, password = true, auth_token = true,
                     api_key_secret = true, authorization = true, code = true }
local BODY_KEY = { body = true, template_variables = true }

-- Parameters as stored: secrets removed, bodies per the configured mode.
function M.scrub(args, bodies)
  local out = {}
  for k, v in pairs(args or {}) do
    local key = tostring(k):lower()
    if SECRET_KEY[key] then
      out[k] = "[removed]"
    elseif BODY_KEY[key] then
      local text = type(v) == "string" and v or json.encode(v)
      if bodies == "full" then
        out[k] = v
      elseif bodies == "hash" then
        out[k] = "sha256:" .. vault.sha256_hex(text)
      else
        out[k] = ("[%d characters]"):format(utf8.len(text) or #text)
      end
    elseif type(v) == "table" then
      out[k] = M.scrub(v, bodies)
    else
      out[k] = v
    end
  end
  return out
end

function M.new(db, opts)
  return setmetatable({ db = db, queue = {}, flush_ms = opts.flush_ms or 20,
                        bodies = opts.bodies or "redacted", scheduled = false }, M)
end

local INSERT = "INSERT INTO tool_calls (at, tenant_id, agent_id, execution_id, sender_tier, tool,"
  .. " action, params, decision, policies, outcome, detail, duration_ms)"
  .. " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"

function M:flush()
  local q = self.queue
  if #q == 0 then return true end
  self.queue = {}
  local db = self.db
  local ok, err = db:begin()
  if ok then
    for _, r in ipairs(q) do
      ok, err = db:run(INSERT, r.at, r.tenant_id, r.agent_id, r.execution_id, r.sender_tier,
        r.tool, r.action, r.params, r.decision, r.policies, r.outcome, r.detail, r.duration_ms)
      if not ok then break end
    end
    if ok then ok, err = db:commit() else db:rollback() end
  end
  if not ok then
    log.error("audit: could not write %d records: %s", #q, tostring(err))
    return nil, err
  end
  return true
end

-- rec: { tenant_id, agent_id, execution_id, sender_tier, tool, action,
--        args, decision, policies = {…}, outcome, detail, duration_ms }
function M:record(rec)
  self.queue[#self.queue + 1] = {
    at = os.date("!%Y-%m-%dT%H:%M:%SZ"), tenant_id = rec.tenant_id, agent_id = rec.agent_id,
    execution_id = rec.execution_id, sender_tier = rec.sender_tier, tool = rec.tool,
    action = rec.action, params = json.encode(M.scrub(rec.args, self.bodies)),
    decision = rec.decision, policies = json.encode(json.array(rec.policies)),
    outcome = rec.outcome, detail = rec.detail and json.encode(rec.detail) or nil,
    duration_ms = rec.duration_ms,
  }
  if self.flush_ms == 0 then return self:flush() end
  if not self.scheduled then
    self.scheduled = true
    loop.spawn(function()
      loop.sleep(self.flush_ms / 1000)
      self.scheduled = false
      self:flush()
    end)
  end
  return true
end

return M
