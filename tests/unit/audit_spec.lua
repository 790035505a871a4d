-- The audit trail's parameter scrubbing and hash chain, on a real SQLite file.
local H = require("helpers")
local audit = require("switchboard.audit")
local db_mod = require("switchboard.db")
local vault = require("core.vault")

describe("audit", function()
  it("removes secrets and stores bodies as configured", function()
    local args = { to = "+14155550123", body = "hello there", code = "123456", api_key_secret = "s3cret",
                   template_variables = { ["1"] = "Ana" } }
    local full = audit.scrub(args, "full")
    assert.equal("hello there", full.body)
    assert.equal("[removed]", full.code)
    assert.equal("[removed]", full.api_key_secret)
    local red = audit.scrub(args, "redacted")
    assert.equal("[11 characters]", red.body)
    assert.equal("+14155550123", red.to)
    local hashed = audit.scrub(args, "hash")
    assert.equal("sha256:" .. vault.sha256_hex("hello there"), hashed.body)
    assert.truthy(hashed.template_variables:match("^sha256:%x+$"))
  end)

  it("chains records and finds an edit, a deletion and a reordering", function()
    local dir = H.tmpdir("audit")
    local db = assert(db_mod.open(dir .. "/a.db"))
    local w = audit.new(db, { flush_ms = 0 })
    for i = 1, 5 do
      w:record({ tenant_id = 1, agent_id = 1, execution_id = "e", sender_tier = "owner", tool = "t" .. i,
                 args = { n = i }, decision = "allow", policies = {}, outcome = "ok", duration_ms = i / 3 })
    end
    assert.is_true(audit.verify(db).ok)
    assert.equal(5, audit.verify(db).records)
    -- a second writer on the same file continues the chain
    local w2 = audit.new(db, { flush_ms = 0 })
    w2:record({ tenant_id = 1, agent_id = 1, execution_id = "e", sender_tier = "owner", tool = "t6",
                args = {}, decision = "allow", policies = { "p" }, outcome = "ok", duration_ms = 1 })
    assert.is_true(audit.verify(db).ok)
    db:run("UPDATE audit_log SET tool = 'x' WHERE id = 3")
    local r = audit.verify(db)
    assert.is_false(r.ok)
    assert.equal(3, r.id)
    db:run("UPDATE audit_log SET tool = 't3' WHERE id = 3")
    assert.is_true(audit.verify(db).ok)
    -- reorder: swap the contents of records 2 and 4
    local a = db:row("SELECT * FROM audit_log WHERE id = 2")
    local b = db:row("SELECT * FROM audit_log WHERE id = 4")
    local SWAP = "UPDATE audit_log SET tool = ?, params = ?, hash = ?, prev_hash = ? WHERE id = ?"
    db:run(SWAP, b.tool, b.params, b.hash, b.prev_hash, 2)
    db:run(SWAP, a.tool, a.params, a.hash, a.prev_hash, 4)
    r = audit.verify(db)
    assert.is_false(r.ok)
    assert.equal(2, r.id)
    db:run(SWAP, a.tool, a.params, a.hash, a.prev_hash, 2)
    db:run(SWAP, b.tool, b.params, b.hash, b.prev_hash, 4)
    db:run("DELETE FROM audit_log WHERE id = 5")
    r = audit.verify(db)
    assert.is_false(r.ok)
    assert.equal(5, r.id)
    assert.truthy(r.problem:find("missing", 1, true))
    db:close()
  end)
end)
