-- store.stats and store.backup on real SQLite files: the metrics' counts,
-- and what restore checks in a copy of the database.
local H = require("helpers")
local store = require("core.store")
local db_mod = require("switchboard.db")
local tenants = require("switchboard.store.tenants")
local stats = require("switchboard.store.stats")
local backup = require("switchboard.store.backup")

local function send(db, tenant, status, delivery)
  assert(db:run("INSERT INTO sends (tenant_id, tool, recipient, request, status, delivery_status, created_at,"
    .. " created_unix, updated_at) VALUES (?, 'send_message', '+14155550100', x'00', ?, ?, 'now', 0, 'now')",
    tenant, status, delivery))
end

describe("store.stats", function()
  it("counts sends by status and each tenant's delivered share of final receipts", function()
    local dir = H.tmpdir("ststats")
    local db = assert(db_mod.open(dir .. "/a.db"))
    assert.same({}, assert(stats.sends_by_status(db)))
    assert.same({}, assert(stats.delivery_by_tenant(db)))
    local a = assert(tenants.add(db, "acme", function() return "k", 1 end))
    local b = assert(tenants.add(db, "beta", function() return "k", 1 end))
    send(db, a, "sent", "delivered")
    send(db, a, "sent", "read")
    send(db, a, "sent", "undelivered")
    send(db, a, "sent", "sent")                       -- not final: not counted
    send(db, a, "failed", nil)
    send(db, b, "sent", "failed")
    send(db, b, "pending", nil)
    assert.same({ sent = 5, failed = 1, pending = 1 }, assert(stats.sends_by_status(db)))
    assert.same({ { tenant = "acme", ok = 2, n = 3 }, { tenant = "beta", ok = 0, n = 1 } },
      assert(stats.delivery_by_tenant(db)))
    db:close()
    H.sh("rm -rf " .. H.q(dir))
  end)
end)

describe("store.backup", function()
  it("says a Switchboard database is intact and has its tables; another is not", function()
    local dir = H.tmpdir("stbackup")
    local db = assert(db_mod.open(dir .. "/a.db"))
    assert.equal("ok", backup.integrity(db))
    assert.is_true(backup.has_tables(db, { "tenants", "agents", "audit_log" }))
    db:close()
    local other = assert(store.open(dir .. "/other.db"))
    assert(other:exec("CREATE TABLE tenants (id INTEGER PRIMARY KEY)"))
    assert.equal("ok", backup.integrity(other))
    assert.is_false(backup.has_tables(other, { "tenants", "agents", "audit_log" }))
    assert.has_error(function() backup.has_tables(other, {}) end)
    other:close()
    H.sh("rm -rf " .. H.q(dir))
  end)
end)
