-- core.auditchain: the C walk over intact keyed records that audit verify
-- takes for its common case. It passes exactly the records the Lua checks
-- pass (its canonical form is audit.lua's, byte for byte: every record the
-- writer wrote verifies through it), stops before the first record it
-- cannot pass, and the verdict of a verify is the same with it and
-- without it (audit.FAST = false), at the same first bad id.
local H = require("helpers")
local audit = require("switchboard.audit")
local chain = require("core.auditchain")
local db_mod = require("switchboard.db")
local vault = require("core.vault")

local function master_in(dir, name)
  local path = dir .. "/" .. (name or "master.key")
  assert(vault.create_master(path))
  return assert(vault.load_master(path))
end

-- every byte, every escape lua-cjson makes, UTF-8, and the float and
-- integer extremes, in the columns the writer stores as given
local ALL_BYTES = {}
for b = 0, 255 do ALL_BYTES[#ALL_BYTES + 1] = string.char(b) end
ALL_BYTES = table.concat(ALL_BYTES)
local ODD = { ALL_BYTES, '"quoted" \\ back / slash', "\0nul\0", "é ✓ 😀", "", ("x"):rep(70000), "\127\31\8\12" }
local FLOATS = { 0.1, 1 / 3, 1e-310, -2.5, 1e300, math.huge, -math.huge, 0.0, -0.0 }

local function call(i)
  local odd = ODD[i % #ODD + 1]
  return { tenant_id = i % 3 == 0 and math.maxinteger or 1, agent_id = i % 4 == 0 and nil or math.mininteger,
           execution_id = odd, sender_tier = "owner", tool = "t" .. i, action = i % 2 == 0 and odd or nil,
           args = { n = i, s = odd }, decision = "allow", policies = { odd }, outcome = "ok",
           detail = i % 5 ~= 0 and { text = odd, n = i } or nil, retries = -i,
           duration_ms = FLOATS[i % #FLOATS + 1] }
end

local N = 40

-- A trail of N records (call records, settings changes, batches of
-- several), its anchor written.
local function trail()
  local t = { dir = H.tmpdir("auditchain") }
  t.master = master_in(t.dir)
  t.anchor = t.dir .. "/audit.head"
  t.db = assert(db_mod.open(t.dir .. "/a.db"))
  t.w = audit.new(t.db, t.master, { flush_ms = 0, anchor_file = t.anchor })
  for i = 1, N do
    if i % 7 == 0 then
      t.w:setting(1, "operator " .. ODD[i % #ODD + 1], "tenant.update", { v = i }, { v = ODD[i % #ODD + 1] })
    else
      t.w.flush_ms = 1                      -- queue the records of a batch
      assert(t.w:record(call(i)))
      t.w.flush_ms = 0
    end
    if i % 3 == 0 then assert(t.w:flush()) end
  end
  assert(t.w:flush())
  t.top = t.db:row("SELECT max(id) AS id FROM audit_log").id
  t.head = t.db:row("SELECT hash FROM audit_log WHERE id = ?", t.top).hash
  function t.walk(after, prev, seconds)
    return chain.walk(t.db, t.master, after or 0, t.top, prev or audit.GENESIS, seconds or 10)
  end
  -- the verify's verdict with the C walk and without it
  function t.verdicts()
    local fast = audit.verify_trail(t.db, t.master, t.anchor)
    audit.FAST = false
    local ok, slow = pcall(audit.verify_trail, t.db, t.master, t.anchor)
    audit.FAST = true
    assert(ok, slow)
    return fast, slow
  end
  function t.close()
    t.db:close()
    t.master:close()
    H.sh("rm -rf " .. H.q(t.dir))
  end
  return t
end

local function row(db, id) return db:row("SELECT * FROM audit_log WHERE id = ?", id) end

describe("core.auditchain", function()
  it("passes every record the writer wrote: its canonical form is audit.lua's", function()
    local t = trail()
    assert.equal(N, t.top)
    local n, head, claim, claim_by, timed = t.walk()
    assert.same({ N, t.head, false }, { n, head, timed })
    -- the highest anchor claim, and the first record that made it
    local c = t.db:row("SELECT anchored, min(id) AS id FROM audit_log WHERE anchored ="
      .. " (SELECT max(anchored) FROM audit_log)")
    assert.same({ c.anchored, c.id }, { claim, claim_by })
    -- from the middle, given the head there
    local mid = row(t.db, 20)
    local m, h = t.walk(20, mid.hash)
    assert.same({ N, t.head }, { m, h })
    -- and the same result as the Lua walk
    local fast, slow = t.verdicts()
    assert.is_true(fast.ok, fast.problem)
    assert.same(slow, fast)
    t.close()
  end)

  it("stops after a slice of time, where it can go on from", function()
    local t = trail()
    local n, head, _, _, timed = t.walk(0, audit.GENESIS, 0)
    assert.is_true(timed)
    assert.is_true(n > 0 and n < N, n)
    assert.equal(row(t.db, n).hash, head)
    local m, h2, _, _, timed2 = t.walk(n, head)
    assert.same({ N, t.head, false }, { m, h2, timed2 })
    t.close()
  end)

  it("yields between slices in a verify and reports progress", function()
    local t = trail()
    local slice = audit.SLICE
    audit.SLICE = 0
    local yields, progress = 0, {}
    local ok, v = pcall(audit.verify_trail, t.db, t.master, t.anchor, nil, {
      yield = function() yields = yields + 1 end,
      progress = function(checked, total) progress[#progress + 1] = { checked, total } end })
    audit.SLICE = slice
    assert(ok, v)
    assert.is_true(v.ok, v.problem)
    assert.is_true(yields >= 1)
    assert.same({ N, N }, progress[#progress])
    t.close()
  end)

  it("leaves a reanchor record to audit.lua, which lists its warning", function()
    local t = trail()
    t.db:close()
    os.remove(t.anchor)                     -- the next start reanchors and records it
    t.db = assert(db_mod.open(t.dir .. "/a.db"))
    t.w = audit.new(t.db, t.master, { flush_ms = 0, anchor_file = t.anchor })
    local id = t.db:row("SELECT id FROM audit_log WHERE action = 'audit.reanchor'").id
    t.top = id
    assert.equal(id - 1, (t.walk()))
    local fast, slow = t.verdicts()
    assert.is_true(fast.ok, fast.problem)
    assert.equal(1, #fast.warnings)
    assert.same(slow, fast)
    t.close()
  end)

  -- tampers: the walk stops before the record, and the verify's verdict
  -- (first bad id, problem) is the Lua walk's
  local tampers = {
    { 9, "an edited field", "UPDATE audit_log SET outcome = 'failed' WHERE id = 9" },
    { 10, "a float below its printed precision", function(t)
        local d = row(t.db, 10).duration_ms
        t.db:run("UPDATE audit_log SET duration_ms = ? WHERE id = 10", d + d * 4e-16)
      end },
    { 11, "a number made text", "UPDATE audit_log SET retries = 'r' || retries WHERE id = 11" },
    { 12, "a text made NULL", "UPDATE audit_log SET action = NULL WHERE id = 12" },
    { 13, "a NULL made empty", "UPDATE audit_log SET action = '' WHERE id = 13" },
    { 19, "one byte of a long text", function(t)
        local p = row(t.db, 19).execution_id
        assert(#p > 65536)
        t.db:run("UPDATE audit_log SET execution_id = ? WHERE id = 19", p:sub(1, -2) .. "y")
      end },
    { 15, "an escaped byte swapped for its escape", function(t)
        local p = row(t.db, 15).execution_id
        assert(p:find("/", 1, true))
        t.db:run("UPDATE audit_log SET execution_id = ? WHERE id = 15", (p:gsub("/", "\\/", 1)))
      end },
    { 8, "a middle record deleted", "DELETE FROM audit_log WHERE id = 8" },
    { 8, "two records reordered", function(t)
        local a, b = row(t.db, 8), row(t.db, 10)
        local SWAP = "UPDATE audit_log SET tool = ?, params = ?, duration_ms = ?, hash = ?, prev_hash = ?,"
          .. " anchored = ? WHERE id = ?"
        t.db:run(SWAP, b.tool, b.params, b.duration_ms, b.hash, b.prev_hash, b.anchored, 8)
        t.db:run(SWAP, a.tool, a.params, a.duration_ms, a.hash, a.prev_hash, a.anchored, 10)
      end },
    { 20, "an anchor claim edited", "UPDATE audit_log SET anchored = 0 WHERE id = 20 AND anchored > 0" },
    { 22, "an anchor claim at its own id", "UPDATE audit_log SET anchored = id WHERE id = 22" },
    { 23, "a hash in upper case", "UPDATE audit_log SET hash = upper(hash) WHERE id = 23" },
    { 24, "a hash cut short", "UPDATE audit_log SET hash = substr(hash, 1, 63) WHERE id = 24" },
    { 25, "the chain version made 2", "UPDATE audit_log SET chain = 2 WHERE id = 25" },
    { 26, "the chain version made text", "UPDATE audit_log SET chain = '1' || '' || 'x' WHERE id = 26" },
    { 27, "a record rewritten with a plain hash", function(t)
        local r = row(t.db, 27)
        t.db:run("UPDATE audit_log SET chain = 0, hash = ? WHERE id = 27", audit.plain_hash(r.prev_hash, r))
      end },
    { 29, "a record MAC'd under another key", function(t)
        local other = master_in(t.dir, "other.key")
        local r = row(t.db, 29)
        r.outcome = "failed"
        t.db:run("UPDATE audit_log SET outcome = 'failed', hash = ? WHERE id = 29", audit.mac(other, r.prev_hash, r))
        other:close()
      end },
    { 30, "a prev_hash edited", "UPDATE audit_log SET prev_hash = upper(prev_hash) WHERE id = 30" },
  }

  for _, c in ipairs(tampers) do
    local id, name, tamper = table.unpack(c)
    it("stops before " .. name .. ", and the verify's verdict is the Lua walk's", function()
      local t = trail()
      if type(tamper) == "string" then assert(t.db:run(tamper)) else tamper(t) end
      assert.equal(id - 1, (t.walk()))
      local fast, slow = t.verdicts()
      assert.is_false(slow.ok, name .. ": the Lua walk found nothing")
      assert.same(slow, fast)
      assert.equal(id, fast.id)
      t.close()
    end)
  end

  -- (SQLite gives a column of a declared type back in that type whatever
  -- the update: an integer made a float stays an integer, for instance;
  -- a BLOB is a Lua string as a TEXT is, to both walks)
  it("passes a text stored as a BLOB of the same bytes, as the Lua walk does", function()
    local t = trail()
    assert(t.db:run("UPDATE audit_log SET tool = CAST(tool AS BLOB), prev_hash = CAST(prev_hash AS BLOB),"
      .. " hash = CAST(hash AS BLOB) WHERE id = 5"))
    assert.equal("blob", t.db:row("SELECT typeof(tool) AS t FROM audit_log WHERE id = 5").t)
    assert.equal(N, (t.walk()))
    local fast, slow = t.verdicts()
    assert.is_true(fast.ok, fast.problem)
    assert.same(slow, fast)
    t.close()
  end)

  it("refuses what is not a database and a master key", function()
    local t = trail()
    assert.has_error(function() chain.walk(t.master, t.master, 0, 1, audit.GENESIS, 1) end)
    assert.has_error(function() chain.walk(t.db, t.db, 0, 1, audit.GENESIS, 1) end)
    t.db:close()
    assert.has_error(function() t.walk() end, "attempt to use a closed database")
    t.master:close()
    H.sh("rm -rf " .. H.q(t.dir))
  end)
end)
