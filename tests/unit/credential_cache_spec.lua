-- The per-tenant cache of opened Twilio credentials
-- (switchboard.credentials, through the Twilio connection's open_client):
-- keyed by the tenant and checked against the sealed key it was opened
-- from, wiped on rotation, forget, expiry, and with a zero lifetime.
-- Run: ./switchboard exec /usr/bin/busted --lpath='tests/?.lua' tests/unit/credential_cache_spec.lua
local H = require("helpers")
local loop = require("core.loop")
local vault = require("core.vault")
local directory = require("switchboard.directory")
local credentials = require("switchboard.credentials")
assert(require("switchboard.integrations").load({ H.ROOT .. "/integrations" }))
local conn_mod = require("integrations.twilio.connection")

local SK1 = "SK" .. ("11"):rep(16)
local SK2 = "SK" .. ("22"):rep(16)

local function closed(cred) return tostring(cred):find("(closed)", 1, true) ~= nil end

describe("twilio credential cache", function()
  local dir, master, rt, t1, t2

  local function conn_for(t, secret, sk)
    return { account_sid = "AC" .. ("00"):rep(16), api_key_sid = sk or SK1, key_id = sk or SK1,
             secret = assert(directory.seal(master, t, conn_mod.FIELD, secret)) }
  end

  setup(function()
    dir = H.tmpdir("credcache")
    assert(vault.create_master(dir .. "/master.key"))
    master = assert(vault.load_master(dir .. "/master.key"))
    rt = { master = master, cfg = { twilio = { hosts = { api = "http://127.0.0.1:1" }, timeout = 5,
                                               credential_seconds = 300 } } }
    t1 = { id = 1, data_key = assert(master:new_data_key(directory.key_context(1))) }
    t2 = { id = 2, data_key = assert(master:new_data_key(directory.key_context(2))) }
  end)

  teardown(function()
    credentials.forget_all()
    master:close()
    os.execute("rm -rf " .. H.q(dir))
  end)

  before_each(function()
    credentials.forget_all()
    rt.cfg.twilio.credential_seconds = 300
  end)

  it("opens a tenant's credential once and hands the same handle to later calls", function()
    local conn = conn_for(t1, "first-secret-0000000001")
    local c1, h1 = assert(conn_mod.open_client(rt, t1, conn))
    h1:close()
    local cred = credentials.cached("twilio", 1)
    assert.is_false(closed(cred))
    local c2, h2 = assert(conn_mod.open_client(rt, t1, conn))
    assert.equal(c1.credential, c2.credential)
    assert.equal(cred, c2.credential)
    h2:close()
    h2:close()          -- idempotent
    assert.is_false(closed(cred))
  end)

  it("never gives one tenant's credential to another", function()
    local a = conn_for(t1, "tenant-one-secret-00001")
    local b = conn_for(t2, "tenant-two-secret-00002", SK2)
    local ca, ha = assert(conn_mod.open_client(rt, t1, a))
    local cb, hb = assert(conn_mod.open_client(rt, t2, b))
    assert.are_not.equal(ca.credential, cb.credential)
    assert.equal(SK1, ca.credential:username())
    assert.equal(SK2, cb.credential:username())
    ha:close(); hb:close()
    -- tenant 2 presenting tenant 1's sealed key gets nothing from the cache:
    -- the blob is bound to tenant 1 and does not open for tenant 2
    local c, err = conn_mod.open_client(rt, t2, a)
    assert.is_nil(c)
    assert.truthy(err:find("could not be opened", 1, true))
    assert.is_true(closed(cb.credential))      -- tenant 2's entry was replaced, and wiped
  end)

  it("opens the new key after a rotation and wipes the old handle", function()
    local old = conn_for(t1, "old-secret-000000000001")
    local _, h = assert(conn_mod.open_client(rt, t1, old))
    h:close()
    local old_cred = credentials.cached("twilio", 1)
    local new = conn_for(t1, "new-secret-000000000002", SK2)
    local c, h2 = assert(conn_mod.open_client(rt, t1, new))
    assert.equal(SK2, c.credential:username())
    assert.are_not.equal(old_cred, c.credential)
    assert.is_true(closed(old_cred))
    h2:close()
    -- the same key SID with a newly sealed secret is a new key too
    local resealed = conn_for(t1, "new-secret-000000000003", SK2)
    local c3, h3 = assert(conn_mod.open_client(rt, t1, resealed))
    assert.are_not.equal(c.credential, c3.credential)
    assert.is_true(closed(c.credential))
    h3:close()
  end)

  it("forget wipes the handle, after the call still using it ends", function()
    local conn = conn_for(t1, "forget-secret-000000001")
    local c, h = assert(conn_mod.open_client(rt, t1, conn))
    conn_mod.forget(1)
    assert.is_nil(credentials.cached("twilio", 1))
    assert.is_false(closed(c.credential))     -- the call in progress keeps it
    h:close()
    assert.is_true(closed(c.credential))
  end)

  it("forget_all wipes every tenant's handle", function()
    local _, ha = assert(conn_mod.open_client(rt, t1, conn_for(t1, "all-secret-000000000001")))
    local _, hb = assert(conn_mod.open_client(rt, t2, conn_for(t2, "all-secret-000000000002")))
    ha:close(); hb:close()
    local a, b = credentials.cached("twilio", 1), credentials.cached("twilio", 2)
    credentials.forget_all()
    assert.is_true(closed(a))
    assert.is_true(closed(b))
  end)

  it("wipes the handle when its time is up", function()
    rt.cfg.twilio.credential_seconds = 0.05
    local conn = conn_for(t1, "expiry-secret-000000001")
    local cred = H.async(function()
      local _, h = assert(conn_mod.open_client(rt, t1, conn))
      h:close()
      local cred = credentials.cached("twilio", 1)
      assert.is_false(closed(cred))
      local deadline = loop.time() + 10
      while not closed(cred) and loop.time() < deadline do loop.sleep(0.02) end
      return cred
    end, 15)
    assert.is_true(closed(cred))
    assert.is_nil(credentials.cached("twilio", 1))
  end)

  it("keeps nothing with credential_seconds = 0, nor for a key being validated", function()
    rt.cfg.twilio.credential_seconds = 0
    local conn = conn_for(t1, "nocache-secret-00000001")
    local c, h = assert(conn_mod.open_client(rt, t1, conn))
    assert.is_nil(credentials.cached("twilio", 1))
    h:close()
    assert.is_true(closed(c.credential))
    rt.cfg.twilio.credential_seconds = 300
    local probe = conn_for(t1, "probe-secret-0000000001", SK2)
    local ok, user = conn_mod.with_client(rt, t1, conn, function(cl) return cl.credential:username() end,
      probe.secret, SK2)
    assert.is_true(ok)
    assert.equal(SK2, user)
    assert.is_nil(credentials.cached("twilio", 1))
  end)
end)
