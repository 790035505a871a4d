-- Upgrading a database from schema 9: the one-connection-per-tenant table
-- becomes connections per (tenant, integration), its provider's columns
-- moved into the integration's settings, and the package reads the same
-- connection back.
local H = require("helpers")
local store = require("core.store")
local db_mod = require("switchboard.db")
local integrations = require("switchboard.integrations")

describe("migration 10", function()
  it("keeps a schema-9 connection, read back by its package as before", function()
    local dir = H.tmpdir("migrate")
    local path = dir .. "/old.db"
    local db = assert(store.open(path))
    for v = 1, 9 do
      assert(db:exec(db_mod.migration_sql(v, "sqlite")))
      assert(db:set_user_version(v))
    end
    assert(db:run("INSERT INTO tenants (id, name, features, data_key, created_at) VALUES (1, 'acme', '[]', ?, 'x')",
      store.blob("k")))
    assert(db:run("INSERT INTO connections (tenant_id, provider, account_sid, api_key_sid, secret, default_number,"
      .. " whatsapp_number, verify_service_sid, autonomous_sends, status, status_reason, account_name,"
      .. " account_status, account_type, numbers, hosts, last_tested_at, created_at, updated_at)"
      .. " VALUES (1, 'twilio', 'AC1', 'SK1', ?, '+14155550100', '+14155238886', 'VA1', 1, 'error', 'refused',"
      .. " 'Acme', 'active', 'Full', ?, NULL, 't', 'c', 'u')", store.blob("sealed"),
      '[{"phone_number":"+14155550100","sms":true}]'))
    db:close()
    db = assert(db_mod.open(path))
    assert.equal(#db_mod.migrations, db:user_version())
    assert(integrations.load({ H.ROOT .. "/integrations" }))
    local conn = assert(require("switchboard.connections").get(db, "twilio", 1))
    assert.equal("SK1", conn.api_key_sid)
    assert.equal("sealed", conn.secret)
    assert.equal("AC1", conn.account_sid)
    assert.equal("+14155550100", conn.default_number)
    assert.equal("+14155238886", conn.whatsapp_number)
    assert.equal("VA1", conn.verify_service_sid)
    assert.is_true(conn.autonomous_sends)
    assert.equal("error", conn.status)
    assert.equal("refused", conn.status_reason)
    assert.equal("Acme", conn.account_name)
    assert.equal("Full", conn.account_type)
    assert.equal("+14155550100", conn.numbers[1].phone_number)
    assert.is_nil(conn.hosts)
    assert.equal("c", conn.created_at)
    -- the table is keyed by (tenant, integration): a second integration fits beside it
    assert(db:run("INSERT INTO connections (tenant_id, integration, status, created_at, updated_at)"
      .. " VALUES (1, 'other', 'active', 'c', 'u')"))
    assert.is_nil(db:run("INSERT INTO connections (tenant_id, integration, status, created_at, updated_at)"
      .. " VALUES (1, 'twilio', 'active', 'c', 'u')"))
    db:close()
    os.execute("rm -rf " .. H.q(dir))
  end)
end)
