-- store.escalations on a real SQLite file: an escalation opened with its
-- sealed arguments (bytes kept), decided once, settled, paged.
local H = require("helpers")
local db_mod = require("switchboard.db")
local tenants = require("switchboard.store.tenants")
local agents = require("switchboard.store.agents")
local escalations = require("switchboard.store.escalations")

local function open()
  local dir = H.tmpdir("stesc")
  local db = assert(db_mod.open(dir .. "/a.db"))
  local t1 = assert(tenants.add(db, "acme", function() return "k1", 1 end))
  local t2 = assert(tenants.add(db, "beta", function() return "k2", 1 end))
  local a1 = assert(agents.add(db, { tenant_id = t1, name = "alice", type = "caioo", groups = {},
                                     default_tier = "external", token_hash = "h1", token_hint = "x" }))
  local a2 = assert(agents.add(db, { tenant_id = t2, name = "bob", type = "caioo", groups = {},
                                     default_tier = "external", token_hash = "h2", token_hint = "x" }))
  return db, { t1 = t1, t2 = t2, a1 = a1, a2 = a2 }, function() db:close() H.sh("rm -rf " .. H.q(dir)) end
end

local SEALED = "sealed\0\255bytes"

local function esc(ids, over)
  local e = { tenant_id = ids.t1, agent_id = ids.a1, sender_tier = "external", tool = "send_message",
              action = "sms", arguments = SEALED, kind = "escalate", reason = "needs a person",
              policy = "autonomous_sends", execution_id = "x1" }
  for k, v in pairs(over or {}) do e[k] = v end
  return e
end

describe("store.escalations", function()
  it("opens an escalation and reads it back with its names; the sealed arguments keep every byte", function()
    local db, ids, close = open()
    local id = assert(escalations.open(db, esc(ids)))
    local e = assert(escalations.get(db, id))
    assert.equal("acme", e.tenant_name)
    assert.equal("alice", e.agent_name)
    assert.equal(SEALED, e.arguments)
    assert.equal("open", e.status)
    assert.equal("x1", e.execution_id)
    assert.is_nil(e.result)
    assert.equal(0, e.result_bytes)
    assert.equal("blob", db:row("SELECT typeof(arguments) AS t FROM escalations WHERE id = ?", id).t)
    assert.truthy(assert(escalations.get(db, id, ids.t1)))
    assert.is_nil(escalations.get(db, id, ids.t2))     -- another tenant's
    assert.is_nil(escalations.get(db, id + 1))
    close()
  end)

  it("refuses misuse, and returns the store's error for a record it cannot hold", function()
    local db, ids, close = open()
    assert.has_error(function() escalations.open(db, esc(ids, { kind = "maybe" })) end)
    assert.has_error(function() escalations.open(db, esc(ids, { arguments = { to = "+1" } })) end)
    assert.has_error(function() escalations.set_result(db, 1, "text") end)
    local id, err = escalations.open(db, esc(ids, { agent_id = 999 }))    -- no such agent
    assert.is_nil(id)
    assert.truthy(err:find("FOREIGN KEY", 1, true), err)
    assert.equal(0, escalations.count_open(db))
    close()
  end)

  it("decides an open escalation once", function()
    local db, ids, close = open()
    local a = assert(escalations.open(db, esc(ids)))
    local b = assert(escalations.open(db, esc(ids)))
    assert.equal(2, escalations.count_open(db))
    assert.equal(1, escalations.approve(db, a, "ops@example"))
    assert.equal(0, escalations.approve(db, a, "someone else"))
    assert.equal(0, escalations.reject(db, a, "someone else", "no"))
    local e = escalations.get(db, a)
    assert.equal("approved", e.status)
    assert.equal("ops@example", e.decided_by)
    assert.truthy(e.decided_at)
    assert.equal(1, escalations.reject(db, b, "ops@example", "not this one"))
    assert.equal("rejected", escalations.get(db, b).status)
    assert.equal("not this one", escalations.get(db, b).decision_note)
    assert.equal(0, escalations.count_open(db))
    close()
  end)

  it("settles: approved without a result, then a result with an unknown outcome, then settled", function()
    local db, ids, close = open()
    local a = assert(escalations.open(db, esc(ids)))
    local b = assert(escalations.open(db, esc(ids)))
    assert.is_nil(escalations.unsettled(db, a))          -- open, not approved
    assert.equal(1, escalations.approve(db, a, "ops"))
    assert.equal(1, escalations.approve(db, b, "ops"))
    assert.same({ a, b }, assert(escalations.approved_without_result(db)))
    assert.equal(a, escalations.unsettled(db, a).id)
    assert.equal(1, escalations.set_result(db, a, { is_error = true, text = "unknown", data = { outcome = "unknown" } }))
    local u = assert(escalations.unsettled(db, a))
    assert.same({ is_error = true, text = "unknown", data = { outcome = "unknown" } }, u.result)
    assert.same({ b }, assert(escalations.approved_without_result(db)))
    assert.equal(1, escalations.set_result(db, a, { is_error = false, text = "sent", data = { outcome = "sent" } }))
    assert.is_nil(escalations.unsettled(db, a))
    -- reopened only while approved without a result
    assert.equal(0, escalations.reopen(db, a, "interrupted"))
    assert.equal(1, escalations.reopen(db, b, "interrupted"))
    local e = escalations.get(db, b)
    assert.equal("open", e.status)
    assert.is_nil(e.decided_by)
    assert.equal("interrupted", e.decision_note)
    close()
  end)

  it("finds the last send record of an escalation", function()
    local db, ids, close = open()
    local a = assert(escalations.open(db, esc(ids)))
    assert.is_nil(escalations.last_send(db, a))
    for _, st in ipairs({ "failed", "sent" }) do
      assert(db:run("INSERT INTO sends (tenant_id, escalation_id, tool, recipient, request, status, created_at,"
        .. " created_unix, updated_at) VALUES (?, ?, 'send_message', '+14155550100', x'00', ?, 'now', 0, 'now')",
        ids.t1, a, st))
    end
    assert.equal("sent", escalations.last_send(db, a).status)
    close()
  end)

  it("pages a tenant's escalations newest first, by status or all, with the result's stored size", function()
    local db, ids, close = open()
    local made = {}
    for i = 1, 5 do made[i] = assert(escalations.open(db, esc(ids))) end
    assert(escalations.open(db, esc(ids, { tenant_id = ids.t2, agent_id = ids.a2 })))  -- not listed
    assert.equal(1, escalations.approve(db, made[2], "ops"))
    assert.equal(1, escalations.set_result(db, made[2], { text = "done" }))
    local p = assert(escalations.page(db, ids.t1, "open", math.maxinteger, 3))
    assert.same({ made[5], made[4], made[3] }, { p[1].id, p[2].id, p[3].id })
    p = assert(escalations.page(db, ids.t1, "open", made[3], 3))
    assert.same({ made[1] }, { p[1].id })
    p = assert(escalations.page(db, ids.t1, nil, made[3], 10))
    assert.same({ made[2], made[1] }, { p[1].id, p[2].id })
    assert.same({ text = "done" }, p[1].result)
    assert.equal(#'{"text":"done"}', p[1].result_bytes)
    assert.equal("alice", p[1].agent_name)
    close()
  end)
end)
