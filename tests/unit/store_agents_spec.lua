-- store.agents on a real SQLite file: rows as Lua values (groups a list,
-- trusted_sender a boolean), tokens looked up by hash among live agents.
local H = require("helpers")
local db_mod = require("switchboard.db")
local tenants = require("switchboard.store.tenants")
local agents = require("switchboard.store.agents")

local function open()
  local dir = H.tmpdir("stagents")
  local db = assert(db_mod.open(dir .. "/a.db"))
  local t1 = assert(tenants.add(db, "acme", function() return "k1", 1 end))
  local t2 = assert(tenants.add(db, "beta", function() return "k2", 1 end))
  return db, t1, t2, function() db:close() H.sh("rm -rf " .. H.q(dir)) end
end

local function agent(t, name, over)
  local a = { tenant_id = t, name = name, type = "caioo", groups = {}, default_tier = "external",
              trusted_sender = false, token_hash = "hash-" .. t .. "-" .. name, token_hint = "sbt_xxxx…" }
  for k, v in pairs(over or {}) do a[k] = v end
  return a
end

describe("store.agents", function()
  it("adds an agent and reads it back as Lua values", function()
    local db, t1, _, close = open()
    local id = assert(agents.add(db, agent(t1, "alice", { groups = { "messaging", "lookup" }, trusted_sender = true,
                                                          default_tier = "vip" })))
    local a = assert(agents.get(db, t1, "alice"))
    assert.equal(id, a.id)
    assert.same({ "messaging", "lookup" }, a.groups)
    assert.is_true(a.trusted_sender)
    assert.equal("vip", a.default_tier)
    assert.equal(1, db:row("SELECT trusted_sender FROM agents WHERE id = ?", id).trusted_sender)
    local b = assert(agents.by_id(db, assert(agents.add(db, agent(t1, "bob")))))
    assert.is_false(b.trusted_sender)
    assert.same({}, b.groups)
    assert.equal("[]", db:row("SELECT groups FROM agents WHERE id = ?", b.id).groups)
    assert.equal("alice", agents.name(db, id))
    assert.is_nil(agents.name(db, 999))
    assert.is_nil(agents.get(db, t1, "nobody"))
    close()
  end)

  it("refuses a second agent of the same name in a tenant with the store's error", function()
    local db, t1, t2, close = open()
    assert(agents.add(db, agent(t1, "alice")))
    local id, err = agents.add(db, agent(t1, "alice", { token_hash = "other" }))
    assert.is_nil(id)
    assert.truthy(err:find("UNIQUE", 1, true), err)
    assert(agents.add(db, agent(t2, "alice")))          -- another tenant's name is its own
    assert.has_error(function() agents.add(db, { tenant_id = t1, name = "x" }) end)  -- misuse: no groups
    close()
  end)

  it("lists agents with their tenant, counts the live ones, finds the tenants of a name", function()
    local db, t1, t2, close = open()
    assert(agents.add(db, agent(t2, "zed")))
    assert(agents.add(db, agent(t1, "bob")))
    local alice = assert(agents.add(db, agent(t1, "alice")))
    local all = assert(agents.list(db))
    local names = {}
    for i, r in ipairs(all) do names[i] = r.tenant .. "/" .. r.name end
    assert.same({ "acme/alice", "acme/bob", "beta/zed" }, names)
    local mine = assert(agents.list(db, t1))
    assert.same({ "alice", "bob" }, { mine[1].name, mine[2].name })
    assert.same({}, mine[1].groups)
    assert.equal(2, agents.count_live(db, t1))
    assert(agents.revoke(db, alice))
    assert.equal(1, agents.count_live(db, t1))
    assert.truthy(agents.get(db, t1, "alice").revoked_at)
    assert(agents.add(db, agent(t2, "bob")))
    local ids = assert(agents.tenants_with(db, "bob"))
    table.sort(ids)
    assert.same({ t1, t2 }, ids)
    assert.same({}, assert(agents.tenants_with(db, "nobody")))
    close()
  end)

  it("finds a live agent by token hash, with its tenant's name, features (a list) and key", function()
    local db, t1, _, close = open()
    assert(tenants.set_features(db, t1, { "sms" }))
    local id = assert(agents.add(db, agent(t1, "alice", { token_hash = "h-alice" })))
    local a = assert(agents.by_token_hash(db, "h-alice"))
    assert.equal(id, a.id)
    assert.equal("acme", a.tenant_name)
    assert.same({ "sms" }, a.tenant_features)
    assert.equal("k1", a.tenant_data_key)
    assert.is_false(a.trusted_sender)
    assert.is_nil(agents.by_token_hash(db, "h-nobody"))
    assert(agents.revoke(db, id))
    assert.is_nil(agents.by_token_hash(db, "h-alice"))
    close()
  end)

  it("sets an agent's groups", function()
    local db, t1, _, close = open()
    local id = assert(agents.add(db, agent(t1, "alice")))
    assert(agents.set_groups(db, id, { "messaging" }))
    assert.same({ "messaging" }, agents.by_id(db, id).groups)
    assert(agents.set_groups(db, id, {}))
    assert.same({}, agents.by_id(db, id).groups)
    assert.has_error(function() agents.set_groups(db, id, "messaging") end)
    close()
  end)
end)
