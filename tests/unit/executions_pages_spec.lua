-- The executions pages on a real SQLite file: every execution exactly
-- once across pages (also when calls are added between pages, and when a
-- page stops at its walk bound), each query on an index.
local H = require("helpers")
local db_mod = require("switchboard.db")
local executions = require("switchboard.executions")
local audit_store = require("switchboard.store.audit")

local function open()
  local dir = H.tmpdir("expages")
  local db = assert(db_mod.open(dir .. "/a.db"))
  assert(db:exec("INSERT INTO tenants (id, name, data_key, created_at) VALUES (1, 't1', x'00', 'now'), (2, 't2', x'00', 'now');"
    .. " INSERT INTO agents (id, tenant_id, name, type, token_hash, token_hint, created_at) VALUES"
    .. " (1, 1, 'a1', 'caioo', 'h1', 'x', 'now'), (2, 1, 'a2', 'caioo', 'h2', 'x', 'now'),"
    .. " (3, 1, 'a3', 'caioo', 'h3', 'x', 'now'), (9, 1, 'a9', 'caioo', 'h9', 'x', 'now')"))
  return db, function() db:close() H.sh("rm -rf " .. H.q(dir)) end
end

local function add_call(db, tenant, agent, exec)
  return assert(db:insert("INSERT INTO audit_log (at, kind, tenant_id, agent_id, execution_id, tool, prev_hash, hash)"
    .. " VALUES ('2026-12-01T00:00:00Z', 'call', ?, ?, ?, 't', '', '')", tenant, agent, exec))
end

-- all pages from the first; between(n) runs after page n
local function walk(db, tenant, limit, between)
  local top = db:row("SELECT max(id) AS id FROM audit_log WHERE tenant_id = ? AND kind = 'call'", tenant).id
  local after, out, n = top + 1, {}, 0
  repeat
    local page, pos = executions.page(db, tenant, top, 1, after, limit)
    assert.is_true(#page <= limit)
    for _, e in ipairs(page) do out[#out + 1] = e end
    n = n + 1
    if between then between(n) end
    after = pos
  until not after
  return out, n
end

describe("executions pages", function()
  it("list each execution once, newest activity first, while calls are added between pages", function()
    local db, close = open()
    math.randomseed(7)
    for _ = 1, 400 do
      local agent, exec = math.random(1, 3), "x" .. math.random(1, 60)
      add_call(db, 1, agent, exec)
      add_call(db, 2, agent, exec)                    -- another tenant's calls are not listed
    end
    local scan, batch = executions.SCAN, executions.BATCH
    for _, bounds in ipairs({ { 4096, 256 }, { 7, 4 } }) do
      executions.SCAN, executions.BATCH = bounds[1], bounds[2]
      local expect = {}
      for _, r in ipairs(assert(db:query("SELECT DISTINCT a.name, l.execution_id FROM audit_log l JOIN agents a"
          .. " ON a.id = l.agent_id WHERE l.tenant_id = 1 AND l.kind = 'call'"))) do
        expect[r.name .. "/" .. r.execution_id] = true
      end
      local out, n = walk(db, 1, 9, function()
        add_call(db, 1, 1, "x1")                    -- a listed or a later execution goes on
        add_call(db, 1, 9, "late" .. math.random(1, 1e9))   -- a new one
      end)
      local seen = {}
      for _, e in ipairs(out) do
        local k = e.agent .. "/" .. e.id
        assert.is_nil(seen[k], k .. " twice")
        seen[k] = true
      end
      assert.truthy(n > 5)
      assert.same(expect, seen)
      -- the most recently active first
      local last = db:row("SELECT execution_id FROM audit_log WHERE tenant_id = 1 AND agent_id <> 9"
        .. " ORDER BY id DESC LIMIT 1")
      local fresh = executions.page(db, 1, math.maxinteger, 1, math.maxinteger, 2)
      assert.equal("a9", fresh[1].agent)
      assert.equal(last.execution_id, fresh[2].id)
    end
    executions.SCAN, executions.BATCH = scan, batch
    close()
  end)

  it("runs each of its queries on an index", function()
    local db, close = open()
    local args = {
      walk = { 1, 10, 1, 5 }, later = { 1, "e", 1, 1, 5 }, calls = { 1, "e", 1, 1, 5, 3 }, first = { 1, "e", 1, 1 },
    }
    for name, sql in pairs(audit_store.SQL) do
      local plan = {}
      for _, r in ipairs(assert(db:query("EXPLAIN QUERY PLAN " .. sql, table.unpack(args[name])))) do
        plan[#plan + 1] = r.detail
      end
      plan = table.concat(plan, "; ")
      assert.truthy(plan:find("USING [%w ]*INDEX audit_"), name .. ": " .. plan)
      assert.falsy(plan:find("SCAN", 1, true), name .. ": " .. plan)
    end
    close()
  end)
end)
