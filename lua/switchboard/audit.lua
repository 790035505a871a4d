-- The audit trail: one record per tools/call, whatever its end, and one
-- per settings change, in one hash-chained table:
--   hash_n = SHA-256(hash_{n-1} "\n" canonical(record_n)).
-- Call records are queued and committed together a few milliseconds
-- later (group commit), so the fsync of synchronous=FULL is paid once per
-- batch; shutdown flushes what is queued. There is one writer per
-- database, so the chain has one order.
local loop = require("core.loop")
local vault = require("core.vault")
local json = require("switchboard.json")
local log = require("switchboard.log")

local M = {}
M.__index = M

M.GENESIS = string.rep("0", 64)

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

local COLUMNS = { "id", "at", "kind", "tenant_id", "agent_id", "actor", "execution_id", "sender_tier",
                  "tool", "action", "params", "decision", "policies", "outcome", "detail", "retries",
                  "duration_ms" }

-- The canonical form of a record: its columns in a fixed order, as a
-- JSON array (floats with three decimals, as stored).
local canon_codec = require("cjson").new()
function M.canonical(r)
  local parts = {}
  for i, c in ipairs(COLUMNS) do
    local v = r[c]
    if v == nil then
      v = json.null
    elseif math.type(v) == "float" then
      v = ("%.3f"):format(v)
    end
    parts[i] = v
  end
  return canon_codec.encode(parts)
end

function M.chain(prev, r)
  return vault.sha256_hex(prev .. "\n" .. M.canonical(r))
end

local writers = setmetatable({}, { __mode = "k" })

function M.new(db, opts)
  opts = opts or {}
  local last = db:row("SELECT id, hash FROM audit_log ORDER BY id DESC LIMIT 1")
  local self = setmetatable({ db = db, queue = {}, flush_ms = opts.flush_ms or 20,
                              bodies = opts.bodies or "redacted", scheduled = false,
                              last_id = last and last.id or 0, last_hash = last and last.hash or M.GENESIS }, M)
  writers[db] = self
  return self
end

-- The writer of a database (settings changes are written through it).
function M.for_db(db)
  return writers[db] or M.new(db)
end

local INSERT = "INSERT INTO audit_log (" .. table.concat(COLUMNS, ", ") .. ", prev_hash, hash) VALUES ("
  .. string.rep("?, ", #COLUMNS + 1) .. "?)"

function M:flush()
  local q = self.queue
  if #q == 0 then return true end
  self.queue = {}
  local db = self.db
  local ok, err = db:begin()
  local id, prev = self.last_id, self.last_hash
  if ok then
    for _, r in ipairs(q) do
      id = id + 1
      r.id = id
      local h = M.chain(prev, r)
      local args = {}
      for i, c in ipairs(COLUMNS) do args[i] = r[c] end
      args[#COLUMNS + 1], args[#COLUMNS + 2] = prev, h
      ok, err = db:run(INSERT, table.unpack(args, 1, #COLUMNS + 2))
      if not ok then break end
      prev = h
    end
    if ok then ok, err = db:commit() else db:rollback() end
  end
  if not ok then
    -- keep them, in order, ahead of what came since, and try again soon
    for i = 1, #self.queue do q[#q + 1] = self.queue[i] end
    self.queue = q
    log.error("audit: could not write %d records (kept, retrying): %s", #q, tostring(err))
    self:schedule(1000)
    return nil, err
  end
  self.last_id, self.last_hash = id, prev
  return true
end

function M:schedule(delay_ms)
  if self.scheduled then return end
  self.scheduled = true
  loop.spawn(function()
    loop.sleep(delay_ms / 1000)
    self.scheduled = false
    self:flush()
  end)
end

-- The time stamp, formatted once a second.
local last_sec, last_str = -1, nil
local function now()
  local t = os.time()
  if t ~= last_sec then last_sec, last_str = t, os.date("!%Y-%m-%dT%H:%M:%SZ", t) end
  return last_str
end

-- rec: { tenant_id, agent_id, execution_id, sender_tier, tool, action,
--        args, decision, policies = {…}, outcome, detail, retries, duration_ms }
function M:record(rec)
  self.queue[#self.queue + 1] = {
    at = now(), kind = "call", tenant_id = rec.tenant_id, agent_id = rec.agent_id,
    actor = rec.actor, execution_id = rec.execution_id, sender_tier = rec.sender_tier, tool = rec.tool,
    action = rec.action, params = next(rec.args or {}) == nil and "{}" or json.encode(M.scrub(rec.args, self.bodies)),
    decision = rec.decision, policies = #rec.policies == 0 and "[]" or json.encode(rec.policies),
    outcome = rec.outcome, detail = rec.detail and json.encode(rec.detail) or nil,
    retries = rec.retries or 0,
    duration_ms = math.floor((rec.duration_ms or 0) * 1000 + 0.5) / 1000,
  }
  if self.flush_ms == 0 then return self:flush() end
  self:schedule(self.flush_ms)
  return true
end

-- A settings change: who, what, old and new value. Written on the next
-- loop turn (after the caller's transaction, if any).
function M:setting(tenant_id, actor, action, old, new)
  self.queue[#self.queue + 1] = {
    at = now(), kind = "setting", tenant_id = tenant_id, actor = actor or "unknown", action = action,
    params = json.encode({ old = old == nil and json.null or old, new = new == nil and json.null or new }),
    outcome = "ok",
  }
  self:schedule(0)
  return true
end

-- Walk the chain. Returns { ok = true, records = n } or
-- { ok = false, id = n, problem = "…" } for the first bad record.
function M.verify(db)
  local prev, expect_id, n = M.GENESIS, nil, 0
  local rows = assert(db:query("SELECT * FROM audit_log ORDER BY id"))
  for _, r in ipairs(rows) do
    n = n + 1
    if expect_id and r.id ~= expect_id then
      return { ok = false, id = expect_id, records = n - 1,
               problem = ("record %d is missing (deleted): the next record is %d"):format(expect_id, r.id) }
    end
    if r.prev_hash ~= prev then
      return { ok = false, id = r.id, records = n - 1,
               problem = ("record %d does not follow the record before it (a record was deleted, inserted"
                 .. " or reordered)"):format(r.id) }
    end
    if M.chain(prev, r) ~= r.hash then
      return { ok = false, id = r.id, records = n - 1,
               problem = ("record %d was changed after it was written"):format(r.id) }
    end
    prev, expect_id = r.hash, r.id + 1
  end
  return { ok = true, records = n, last_hash = prev }
end

return M
