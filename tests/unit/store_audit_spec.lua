-- store.audit on a real SQLite file: the chain's records written and read
-- back exactly as stored (types kept, so the MACs hold), and the
-- operator's reads with their JSON columns decoded, each on an index.
local H = require("helpers")
local db_mod = require("switchboard.db")
local tenants = require("switchboard.store.tenants")
local agents = require("switchboard.store.agents")
local audit = require("switchboard.store.audit")

local function open()
  local dir = H.tmpdir("staudit")
  local db = assert(db_mod.open(dir .. "/a.db"))
  local t = assert(tenants.add(db, "acme", function() return "k1", 1 end))
  local a = assert(agents.add(db, { tenant_id = t, name = "alice", type = "caioo", groups = {},
                                    default_tier = "external", token_hash = "h1", token_hint = "x" }))
  local b = assert(agents.add(db, { tenant_id = t, name = "bob", type = "caioo", groups = {},
                                    default_tier = "external", token_hash = "h2", token_hint = "x" }))
  return db, t, a, b, function() db:close() H.sh("rm -rf " .. H.q(dir)) end
end

local n = 0
local NULL = {}            -- a column left NULL
local function record(over)
  n = n + 1
  local r = { id = n, at = "2026-12-01T10:00:0" .. (n % 10) .. "Z", kind = "call", tenant_id = 1, agent_id = 1,
              execution_id = "x1", sender_tier = "external", tool = "send_message", action = "sms",
              params = '{"to":"+14155550100"}', decision = "allow", policies = '["p"]', outcome = "ok",
              retries = 0, duration_ms = 1.5, chain = 1, anchored = 0, prev_hash = "p" .. n, hash = "h" .. n }
  for k, v in pairs(over or {}) do
    if v == NULL then r[k] = nil else r[k] = v end
  end
  return r
end

local function append_all(db, list)
  assert(db_mod.transaction(db, function()
    for _, r in ipairs(list) do
      local ok, err = audit.append(db, r)
      if not ok then return nil, err end
    end
    return true
  end))
end

describe("store.audit: the chain", function()
  before_each(function() n = 0 end)

  it("writes records as given and reads them back with their types", function()
    local db, _, _, _, close = open()
    assert.is_nil(audit.last(db))
    assert.is_nil(audit.top_id(db))
    local r1 = record({ kind = "setting", agent_id = NULL, tool = NULL, chain = 0, anchored = NULL,
                        duration_ms = 2.0, retries = NULL })
    local r2 = record({ detail = '{"send_id":7}', duration_ms = 0.125, anchored = 1, retries = 3 })
    append_all(db, { r1, r2 })
    local got = assert(audit.record(db, 1))
    assert.equal("float", math.type(got.duration_ms))           -- 2.0 stays a float
    assert.is_nil(got.agent_id)
    assert.is_nil(got.anchored)
    got = assert(audit.record(db, 2))
    for k, v in pairs(r2) do assert.equal(v, got[k], k) assert.equal(math.type(v), math.type(got[k]), k) end
    assert.same({ id = 2, hash = "h2", chain = 1, anchored = 1 }, audit.last(db))
    assert.equal("h1", audit.hash_at(db, 1))
    assert.is_nil(audit.hash_at(db, 3))
    assert.equal(1, audit.first_id(db))
    assert.equal(2, audit.top_id(db))
    close()
  end)

  it("answers the chain's questions by version", function()
    local db, _, _, _, close = open()
    assert.is_false(audit.other_chain(db, 0))
    assert.equal(0, audit.count_of_chain(db, 0))
    assert.is_nil(audit.last_of_chain(db, 0))
    append_all(db, { record({ chain = 0 }), record({ chain = 0 }), record({ chain = 1 }) })
    assert.is_true(audit.other_chain(db, 0))
    assert.is_true(audit.other_chain(db, 1))
    assert.equal(2, audit.count_of_chain(db, 0))
    assert.equal(2, audit.last_of_chain(db, 0))
    assert.equal(3, audit.last_of_chain(db, 1))
    close()
  end)

  it("reads records in id order in bounded batches", function()
    local db, _, _, _, close = open()
    local list = {}
    for i = 1, 7 do list[i] = record() end
    append_all(db, list)
    local ids = {}
    for _, r in ipairs(assert(audit.records(db, 2, 6, 3))) do ids[#ids + 1] = r.id end
    assert.same({ 3, 4, 5 }, ids)
    ids = {}
    for _, r in ipairs(assert(audit.records(db, 5, 6, 3))) do ids[#ids + 1] = r.id end
    assert.same({ 6 }, ids)
    close()
  end)

  it("refuses a record without its id, and returns the store's error for one it cannot hold", function()
    local db, _, _, _, close = open()
    assert.has_error(function() audit.append(db, record({ id = "1" })) end)
    local ok, err = audit.append(db, record({ kind = "nonsense" }))
    assert.is_nil(ok)
    assert.truthy(err:find("CHECK", 1, true), err)
    assert.is_nil(audit.top_id(db))
    close()
  end)
end)

describe("store.audit: the operator's reads", function()
  before_each(function() n = 0 end)

  it("walks a tenant's calls and an execution's, decoding what they hold", function()
    local db, t, a, b, close = open()
    append_all(db, {
      record({ tenant_id = t, agent_id = a, execution_id = "x1", at = "2026-12-01T10:00:00Z" }),
      record({ tenant_id = t, agent_id = b, execution_id = "x1", at = "2026-12-01T10:00:01Z" }),
      record({ tenant_id = t, agent_id = a, execution_id = "x2", at = "2026-12-01T10:00:02Z" }),
      record({ tenant_id = t, agent_id = a, execution_id = "x1", at = "2026-12-01T10:00:03Z",
               detail = '{"send_id":9}', params = '{"body":"[5 characters]"}' }),
      record({ tenant_id = t, kind = "setting", agent_id = NULL, execution_id = NULL, actor = "ops",
               action = "tenant.features", params = '{"old":[],"new":["sms"]}', at = "2026-12-01T10:00:04Z" }),
      record({ tenant_id = t + 1, agent_id = a, execution_id = "x1", at = "2026-12-01T10:00:05Z" }),
    })
    local w = assert(audit.walk(db, t, math.maxinteger, 1, 10))
    local ids = {}
    for i, r in ipairs(w) do ids[i] = r.id end
    assert.same({ 4, 3, 2, 1 }, ids)                       -- calls only, this tenant's, newest first
    assert.is_true(audit.called_later(db, t, "x1", a, 1, 4))
    assert.is_false(audit.called_later(db, t, "x1", a, 1, 3))
    local tail = assert(audit.execution_tail(db, t, "x1", a, 1, 4, 10))
    assert.same({ 4, 1 }, { tail[1].id, tail[2].id })
    assert.equal("2026-12-01T10:00:00Z", audit.execution_start(db, t, "x1", a, 1))
    assert.is_nil(audit.execution_start(db, t, "x9", a, 1))
    assert.same({ true, a, b }, { audit.execution_agents(db, t, "x1") })
    assert.same({ true, a, a }, { audit.execution_agents(db, t, "x2") })
    assert.is_false(audit.execution_agents(db, t, "x9"))
    local names = {}
    for _, r in ipairs(assert(audit.execution_agent_names(db, t, "x1", 10))) do names[#names + 1] = r.name end
    table.sort(names)
    assert.same({ "alice", "bob" }, names)
    local calls = assert(audit.execution_calls(db, t, "x1", a, 0, 10))
    assert.same({ 1, 4 }, { calls[1].id, calls[2].id })
    assert.same({ body = "[5 characters]" }, calls[2].params)
    assert.same({ "p" }, calls[2].policies)
    assert.same({ send_id = 9 }, calls[2].detail)
    assert.is_nil(calls[1].detail)
    assert.equal("alice", calls[2].agent_name)
    assert.equal(#'{"body":"[5 characters]"}' + #'{"send_id":9}' + #'["p"]', calls[2].bytes)
    assert.same({ 4 }, { assert(audit.execution_calls(db, t, "x1", a, 1, 10))[1].id })
    assert.equal(4, audit.last_call(db, t))
    assert.is_nil(audit.last_call(db, t + 5))
    assert.equal(3, audit.first_since(db, t, "2026-12-01T10:00:02Z"))
    assert.is_nil(audit.first_since(db, t, "2026-12-02T00:00:00Z"))
    local s = assert(audit.settings(db, t, math.maxinteger, 10))
    assert.same({ { id = 5, at = "2026-12-01T10:00:04Z", actor = "ops", action = "tenant.features", old = {},
                    new = { "sms" }, bytes = #'{"old":[],"new":["sms"]}' + #"ops" } }, s)
    assert.same({}, assert(audit.settings(db, t, 5, 10)))
    close()
  end)

  it("runs each read on an index of audit_log", function()
    local db, _, _, _, close = open()
    local reads = {
      function(d) return audit.walk(d, 1, 10, 1, 5) end,
      function(d) return audit.called_later(d, 1, "e", 1, 1, 5) end,
      function(d) return audit.execution_tail(d, 1, "e", 1, 1, 5, 3) end,
      function(d) return audit.execution_start(d, 1, "e", 1, 1) end,
      function(d) return audit.execution_agents(d, 1, "e") end,
      function(d) return audit.execution_agent_names(d, 1, "e", 10) end,
      function(d) return audit.execution_calls(d, 1, "e", 1, 0, 10) end,
      function(d) return audit.last_call(d, 1) end,
      function(d) return audit.first_since(d, 1, "2026-12-01T00:00:00Z") end,
      function(d) return audit.settings(d, 1, 10, 5) end,
    }
    for i, read in ipairs(reads) do
      -- the statements the read runs, each explained with its own arguments
      local proxy = setmetatable({}, { __index = function(_, name)
        return function(_, sql, ...)
          local plan = {}
          for _, r in ipairs(assert(db:query("EXPLAIN QUERY PLAN " .. sql, ...))) do plan[#plan + 1] = r.detail end
          plan = table.concat(plan, "; ")
          assert.truthy(plan:find("USING [%w ]*INDEX audit_"), i .. ": " .. plan)
          assert.falsy(plan:find("SCAN l", 1, true) or plan:find("SCAN audit_log", 1, true), i .. ": " .. plan)
          return db[name](db, sql, ...)
        end
      end })
      read(proxy)
    end
    close()
  end)
end)
