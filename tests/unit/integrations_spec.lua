-- Package discovery (switchboard.integrations): manifests checked with the
-- field at fault, names unique across directories, a package's modules
-- found by the searcher, its policy defaults under the operator's.
local H = require("helpers")
local integrations = require("switchboard.integrations")

local FIXTURES = H.ROOT .. "/tests/fixtures/integrations"

describe("integration packages", function()
  after_each(function() assert(integrations.load({ H.ROOT .. "/integrations" })) end)

  it("are discovered from each directory, sorted by name", function()
    local list = assert(integrations.load({ H.ROOT .. "/integrations", FIXTURES }))
    local names = {}
    for i, p in ipairs(list) do names[i] = p.name end
    assert.same({ "demo", "twilio" }, names)
    assert.equal("custom.twilio", integrations.get("twilio").feature)
    assert.equal("Demo Tools", integrations.get("demo").group)
    assert.is_nil(integrations.get("demo").tools_dir)
  end)

  it("refuse a name found twice and a directory that does not exist", function()
    local list, err = integrations.load({ FIXTURES, FIXTURES })
    assert.is_nil(list)
    assert.truthy(err:find("integration 'demo' is in both", 1, true), err)
    list, err = integrations.load({ H.ROOT .. "/no/such/dir" })
    assert.is_nil(list)
    assert.truthy(err:find("does not exist", 1, true), err)
  end)

  it("check a manifest and name the field at fault", function()
    local cases = {
      { {}, "name: required" },
      { { name = "x", title = "X", group = "G", color = "red" }, "unknown field 'color'" },
      { { name = "Bad", title = "X", group = "G" }, "name: must be 1-32 lowercase" },
      { { name = "x", title = 3, group = "G" }, "title: must be a string" },
      { { name = "x", title = "X", group = "G", feature = "no spaces" }, "feature: must be a feature code" },
      { { name = "x", title = "X", group = "G" }, "must be the package's folder name 'y'", "y" },
    }
    for _, c in ipairs(cases) do
      local ok, err = integrations.check(c[1], c[3])
      assert.is_nil(ok)
      assert.truthy(err:find(c[2], 1, true), err)
    end
    assert.truthy(integrations.check({ name = "x", title = "X", group = "G" }, "x"))
  end)

  it("find a package's modules wherever its directory is", function()
    assert(integrations.load({ H.ROOT .. "/integrations" }))
    assert.equal("Twilio", require("integrations.twilio").title)
    assert.is_function(assert(integrations.connection("twilio")).install)
    local none, err = integrations.connection("nope")
    assert.is_nil(none)
    assert.truthy(err:find("no integration 'nope'", 1, true), err)
  end)

  it("give their policy defaults under the operator's settings", function()
    assert(integrations.load({ FIXTURES }))
    local s = integrations.policy_settings({ recipients = { per_recipient = 5 }, other = { x = 1 } })
    assert.same({ per_recipient = 5, window_seconds = 60 }, s.recipients)
    assert.same({ x = 1 }, s.other)
    assert.same({ per_recipient = 1, window_seconds = 60 }, integrations.policy_settings(nil).recipients)
  end)

  it("bring their own tables up to date once, recorded per package", function()
    local packages = require("switchboard.store.packages")
    local dir = H.tmpdir("pkgschema")
    local db = assert(require("switchboard.db").open(dir .. "/t.db"))
    local demo = dofile(FIXTURES .. "/demo/init.lua")
    assert.equal(2, packages.migrate(db, "demo", demo.migrations))
    assert.equal(2, packages.migrate(db, "demo", demo.migrations))   -- nothing to do the second time
    assert(db:run("INSERT INTO demo_notes (tenant_id, note, created_at) VALUES (1, 'x', 'now')"))
    -- a step that fails leaves nothing of itself
    local list = { demo.migrations[1], demo.migrations[2], "CREATE TABLE demo_more (id INTEGER PRIMARY KEY);"
      .. " THIS IS NOT SQL" }
    local ok, err = packages.migrate(db, "demo", list)
    assert.is_nil(ok)
    assert.truthy(err:find("integration demo: migration 3 failed", 1, true), err)
    assert.is_nil(db:row("SELECT name FROM sqlite_master WHERE name = 'demo_more'"))
    ok, err = packages.migrate(db, "demo", { demo.migrations[1] })
    assert.is_nil(ok)
    assert.truthy(err:find("newer than the package's 1", 1, true), err)
    db:close()
    os.execute("rm -rf " .. H.q(dir))
  end)
end)
