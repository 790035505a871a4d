-- store.tenants on a real SQLite file: rows as Lua values, the tenant and
-- its data key written in one transaction, the rewrap all or nothing.
local H = require("helpers")
local db_mod = require("switchboard.db")
local tenants = require("switchboard.store.tenants")

local function open()
  local dir = H.tmpdir("sttenants")
  local db = assert(db_mod.open(dir .. "/a.db"))
  return db, function() db:close() H.sh("rm -rf " .. H.q(dir)) end
end

local function count(db)
  return db:row("SELECT count(*) AS n FROM tenants").n
end

describe("store.tenants", function()
  it("adds a tenant with its wrapped data key and reads it back with its features as a list", function()
    local db, close = open()
    local id = assert(tenants.add(db, "acme", function(tid) return "wrapped\0key:" .. tid, 3 end))
    local t = assert(tenants.by_name(db, "acme"))
    assert.equal(id, t.id)
    assert.equal("wrapped\0key:" .. id, t.data_key)
    assert.equal(3, t.data_key_version)
    assert.same({}, t.features)
    assert.truthy(t.created_at:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$"))
    assert(tenants.set_features(db, id, { "sms", "voice" }))
    assert.same({ "sms", "voice" }, tenants.by_id(db, id).features)
    assert.same({ "sms", "voice" }, tenants.features(db, id))
    assert(tenants.set_features(db, id, {}))
    assert.equal("[]", db:row("SELECT features FROM tenants WHERE id = ?", id).features)
    assert.is_nil(tenants.by_name(db, "nobody"))
    assert.is_nil(tenants.by_id(db, id + 1))
    assert.is_nil(tenants.features(db, id + 1))
    close()
  end)

  it("writes nothing when the key cannot be wrapped or the name is taken, and says why", function()
    local db, close = open()
    local id, err = tenants.add(db, "acme", function() return nil, "the master key is locked" end)
    assert.is_nil(id)
    assert.equal("the master key is locked", err)
    assert.equal(0, count(db))
    assert(tenants.add(db, "acme", function() return "k", 1 end))
    id, err = tenants.add(db, "acme", function() return "k", 1 end)
    assert.is_nil(id)
    assert.truthy(err:find("UNIQUE", 1, true), err)
    assert.equal(1, count(db))
    -- not inside another transaction: its writes would not be durable on their own
    assert(db:begin())
    id, err = tenants.add(db, "beta", function() return "k", 1 end)
    db:rollback()
    assert.is_nil(id)
    assert.truthy(err:find("already open", 1, true), err)
    -- misuse raises
    assert.has_error(function() tenants.add(db, nil, function() end) end)
    assert.has_error(function() tenants.add(db, "x") end)
    assert.has_error(function() tenants.set_features(db, 1, "sms") end)
    close()
  end)

  it("lists tenants by name, their keys, and those not on a key version", function()
    local db, close = open()
    local b = assert(tenants.add(db, "beta", function() return "kb", 1 end))
    local a = assert(tenants.add(db, "acme", function() return "ka", 2 end))
    local list = assert(tenants.list(db))
    assert.same({ "acme", "beta" }, { list[1].name, list[2].name })
    assert.same({}, list[1].features)
    assert.is_nil(list[1].data_key)                     -- a list does not carry the keys
    local keys = assert(tenants.keys(db))
    assert.same({ { id = a, name = "acme", data_key = "ka", data_key_version = 2 },
                  { id = b, name = "beta", data_key = "kb", data_key_version = 1 } }, keys)
    assert.same({ { name = "beta", data_key_version = 1 } }, assert(tenants.not_on_version(db, 2)))
    close()
  end)

  it("rewraps in one transaction: every chosen key, or none when a write fails", function()
    local db, close = open()
    local a = assert(tenants.add(db, "acme", function() return "ka", 1 end))
    local b = assert(tenants.add(db, "beta", function() return "kb", 1 end))
    local seen = {}
    assert(tenants.rewrap(db, function(r)
      seen[#seen + 1] = r.id
      if r.name == "beta" then return nil end        -- left as it is
      return r.data_key .. "2", 2
    end))
    assert.same({ a, b }, seen)                      -- in id order
    assert.equal("ka2", tenants.by_id(db, a).data_key)
    assert.equal(2, tenants.by_id(db, a).data_key_version)
    assert.equal("kb", tenants.by_id(db, b).data_key)
    -- a failing write rolls back the rows rewrapped before it
    assert(db:exec("CREATE TRIGGER no_beta BEFORE UPDATE ON tenants WHEN old.name = 'beta'"
      .. " BEGIN SELECT RAISE(ABORT, 'beta is frozen'); END"))
    local ok, err = tenants.rewrap(db, function(r) return r.data_key .. "3", 3 end)
    assert.is_nil(ok)
    assert.truthy(err:find("beta is frozen", 1, true), err)
    assert.equal("ka2", tenants.by_id(db, a).data_key)
    assert.is_false(db:in_transaction())
    close()
  end)

  it("enables, reads and disables a tenant's tool groups", function()
    local db, close = open()
    local a = assert(tenants.add(db, "acme", function() return "ka", 1 end))
    local b = assert(tenants.add(db, "beta", function() return "kb", 1 end))
    assert.same({}, assert(tenants.groups(db, a)))
    assert(tenants.enable_group(db, a, "messaging"))
    assert(tenants.enable_group(db, a, "lookup"))
    assert(tenants.enable_group(db, a, "messaging"))   -- enabled already: kept, no error
    assert(tenants.enable_group(db, b, "messaging"))
    local g = assert(tenants.groups(db, a))
    table.sort(g)
    assert.same({ "lookup", "messaging" }, g)
    assert(tenants.disable_group(db, a, "messaging"))
    assert(tenants.disable_group(db, a, "messaging"))  -- disabled already
    assert.same({ "lookup" }, assert(tenants.groups(db, a)))
    assert.same({ "messaging" }, assert(tenants.groups(db, b)))
    -- inside the caller's transaction: rolled back with it
    assert(db:begin())
    assert(tenants.enable_group(db, a, "voice"))
    db:rollback()
    assert.same({ "lookup" }, assert(tenants.groups(db, a)))
    local ok, err = tenants.enable_group(db, 999, "messaging")   -- no such tenant
    assert.is_nil(ok)
    assert.truthy(err:find("FOREIGN KEY", 1, true), err)
    assert.has_error(function() tenants.enable_group(db, a, "") end)
    close()
  end)

  it("decodes a JSON list column, and anything else as an empty list", function()
    assert.same({ "a" }, tenants.decode_list('["a"]'))
    assert.same({}, tenants.decode_list(nil))
    assert.same({}, tenants.decode_list("not json"))
    assert.same({}, tenants.decode_list('"a string"'))
    local t = { "x" }
    assert.equal(t, tenants.decode_list(t))
  end)
end)
