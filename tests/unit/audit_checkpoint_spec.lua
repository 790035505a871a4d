-- audit verify from its checkpoint: the walk after the checkpoint finds
-- each tamper a full walk finds there, with the same verdict; a
-- checkpoint that does not verify, or a trail changed at or below it,
-- makes the walk start from record 1; edits below the checkpoint are what
-- `--full` is for. The walk reads in batches and yields between them.
local H = require("helpers")
local audit = require("switchboard.audit")
local db_mod = require("switchboard.db")
local loop = require("core.loop")
local vault = require("core.vault")

local function master_in(dir, name)
  local path = dir .. "/" .. (name or "master.key")
  assert(vault.create_master(path))
  return assert(vault.load_master(path))
end

local function call(i)
  return { tenant_id = 1, agent_id = 1, execution_id = "e", sender_tier = "owner", tool = "t" .. i,
           args = { n = i }, decision = "allow", policies = {}, outcome = "ok", duration_ms = i / 3 }
end

local N, CP = 12, 6

-- A trail of N records, one batch each, verified (and checkpointed) at CP.
local function trail()
  local t = { dir = H.tmpdir("auditcp") }
  t.master = master_in(t.dir)
  t.anchor = t.dir .. "/audit.head"
  t.checkpoint = t.dir .. "/audit.head.verified"
  t.db = assert(db_mod.open(t.dir .. "/a.db"))
  t.w = audit.new(t.db, t.master, { flush_ms = 0, anchor_file = t.anchor })
  t.anchors = {}
  for i = 1, N do
    assert(t.w:record(call(i)))
    assert(t.w:flush())
    t.anchors[i] = H.read(t.anchor)
    if i == CP then
      local v = audit.verify_trail(t.db, t.master, t.anchor, nil, { checkpoint = t.checkpoint })
      assert(v.ok and v.records == CP, v.problem)
    end
  end
  function t.incremental()
    local saved = H.read(t.checkpoint)
    local v = audit.verify_trail(t.db, t.master, t.anchor, nil, { checkpoint = t.checkpoint })
    H.write(t.checkpoint, saved)          -- each check starts from the same checkpoint
    return v
  end
  function t.full() return audit.verify_trail(t.db, t.master, t.anchor, nil, { checkpoint = t.checkpoint, full = true }) end
  function t.close()
    t.db:close()
    t.master:close()
    H.sh("rm -rf " .. H.q(t.dir))
  end
  return t
end

local function row(db, id) return db:row("SELECT * FROM audit_log WHERE id = ?", id) end

describe("audit verify from a checkpoint", function()
  it("walks only the records after the checkpoint of an intact trail, and moves it to the end", function()
    local t = trail()
    local cp = assert(audit.read_checkpoint(t.master, t.checkpoint))
    assert.same({ CP, row(t.db, CP).hash }, { cp.id, cp.head })
    local v = audit.verify_trail(t.db, t.master, t.anchor, nil, { checkpoint = t.checkpoint })
    assert.is_true(v.ok, v.problem)
    assert.same({ N, N - CP, CP, N }, { v.records, v.checked, v.from, v.anchored })
    assert.same({}, v.notes)
    assert.equal(N, assert(audit.read_checkpoint(t.master, t.checkpoint)).id)
    -- nothing new: nothing walked
    v = audit.verify_trail(t.db, t.master, t.anchor, nil, { checkpoint = t.checkpoint })
    assert.same({ true, 0, N }, { v.ok, v.checked, v.records })
    t.close()
  end)

  -- tampers after the checkpoint: the same verdict as the full walk
  local tampers = {
    { "an edited field", function(t) t.db:run("UPDATE audit_log SET outcome = 'failed' WHERE id = 9") end },
    { "a float edited below its printed precision", function(t)
        local d = row(t.db, 10).duration_ms
        t.db:run("UPDATE audit_log SET duration_ms = ? WHERE id = 10", d + d * 4e-16)
      end },
    { "a middle record deleted", function(t) t.db:run("DELETE FROM audit_log WHERE id = 8") end },
    { "a record deleted and the ids after it renumbered", function(t)
        t.db:run("DELETE FROM audit_log WHERE id = 8")
        for id = 9, N do t.db:run("UPDATE audit_log SET id = ? WHERE id = ?", id - 1, id) end
      end },
    { "the last record deleted", function(t) t.db:run("DELETE FROM audit_log WHERE id = ?", N) end },
    { "every record after the checkpoint deleted", function(t) t.db:run("DELETE FROM audit_log WHERE id > ?", CP) end },
    { "every record deleted", function(t) t.db:run("DELETE FROM audit_log") end },
    { "two records reordered", function(t)
        local a, b = row(t.db, 8), row(t.db, 10)
        local SWAP = "UPDATE audit_log SET tool = ?, params = ?, duration_ms = ?, hash = ?, prev_hash = ?,"
          .. " anchored = ? WHERE id = ?"
        t.db:run(SWAP, b.tool, b.params, b.duration_ms, b.hash, b.prev_hash, b.anchored, 8)
        t.db:run(SWAP, a.tool, a.params, a.duration_ms, a.hash, a.prev_hash, a.anchored, 10)
      end },
    { "a forged record appended with a correct plain hash", function(t)
        local last = row(t.db, N)
        local f = call(99)
        f.id, f.at, f.kind, f.params, f.policies, f.retries = N + 1, last.at, "call", "{}", "[]", 0
        t.db:run("INSERT INTO audit_log (id, at, kind, tool, params, policies, outcome, retries, duration_ms,"
          .. " chain, prev_hash, hash) VALUES (?, ?, 'call', ?, '{}', '[]', 'ok', 0, ?, 0, ?, ?)",
          f.id, f.at, f.tool, f.duration_ms, last.hash, audit.plain_hash(last.hash, f))
      end },
    { "a forged record appended with an HMAC under another key", function(t)
        local other = master_in(t.dir, "other.key")
        local last = row(t.db, N)
        local f = { id = N + 1, at = last.at, kind = "call", tool = "forged", params = "{}", policies = "[]",
                    outcome = "ok", retries = 0, duration_ms = 1.5, chain = 1, anchored = N }
        t.db:run("INSERT INTO audit_log (id, at, kind, tool, params, policies, outcome, retries, duration_ms,"
          .. " chain, anchored, prev_hash, hash) VALUES (?, ?, 'call', 'forged', '{}', '[]', 'ok', 0, 1.5, 1, ?, ?, ?)",
          f.id, f.at, N, last.hash, audit.mac(other, last.hash, f))
        other:close()
      end },
    { "an anchor claim edited", function(t) t.db:run("UPDATE audit_log SET anchored = 0 WHERE id = 9") end },
    { "the checkpoint's record edited", function(t)
        t.db:run("UPDATE audit_log SET outcome = 'failed' WHERE id = ?", CP)
      end },
    { "the checkpoint's record deleted", function(t) t.db:run("DELETE FROM audit_log WHERE id = ?", CP) end },
    { "the first record deleted", function(t) t.db:run("DELETE FROM audit_log WHERE id = 1") end },
    { "the anchor replaced with an older copy", function(t) H.write(t.anchor, t.anchors[8]) end },
    { "the anchor replaced with a copy older than the checkpoint", function(t) H.write(t.anchor, t.anchors[3]) end },
    { "the anchor deleted", function(t) os.remove(t.anchor) end },
    { "the anchor edited", function(t)
        H.write(t.anchor, (t.anchors[N]:gsub("id 12\ncount 12", "id 11\ncount 11")))
      end },
    { "an edit after the checkpoint hidden by a checkpoint moved past it", function(t)
        t.db:run("UPDATE audit_log SET outcome = 'failed' WHERE id = 9")
        H.write(t.checkpoint, (H.read(t.checkpoint):gsub("\nid 6\nhead %x+", "\nid 11\nhead " .. row(t.db, 11).hash)))
      end },
  }

  for _, c in ipairs(tampers) do
    local name, tamper = table.unpack(c)
    it("gives the full walk's verdict on " .. name, function()
      local t = trail()
      tamper(t)
      local full = t.full()
      local inc = t.incremental()
      assert.is_false(full.ok, name .. ": the full walk found nothing")
      assert.is_false(inc.ok, name .. " was not found from the checkpoint")
      assert.same({ full.id, full.problem }, { inc.id, inc.problem })
      -- a broken walk leaves the checkpoint where it was
      local cp = audit.read_checkpoint(t.master, t.checkpoint)
      if name:find("moved", 1, true) then assert.is_nil(cp) else assert.equal(CP, cp.id) end
      t.close()
    end)
  end

  it("walks in full, with a note, when the checkpoint does not verify", function()
    local t = trail()
    H.write(t.checkpoint, (H.read(t.checkpoint):gsub("\nlegacy 0\n", "\nlegacy 1\n")))
    local v = t.incremental()
    assert.is_true(v.ok, v.problem)
    assert.same({ 0, N }, { v.from, v.checked })
    assert.truthy(v.notes[1]:find("does not verify", 1, true), v.notes[1])
    t.close()
  end)

  it("does not see an edit below the checkpoint, which the full walk finds", function()
    local t = trail()
    t.db:run("UPDATE audit_log SET outcome = 'failed' WHERE id = 3")
    local inc = t.incremental()
    assert.is_true(inc.ok)                  -- the documented limit: --full
    assert.equal(CP, inc.from)
    local full = t.full()
    assert.is_false(full.ok)
    assert.equal(3, full.id)
    t.close()
  end)

  -- (the Lua walk: the C walk over keyed records slices by time,
  -- tests/unit/auditchain_spec.lua)
  it("reads in batches and yields between them, reporting progress", function()
    local t = trail()
    local batch = audit.BATCH
    audit.BATCH, audit.FAST = 4, false
    local yields, progress = 0, {}
    local ok, v = pcall(audit.verify_trail, t.db, t.master, t.anchor, nil, { full = true,
      yield = function() yields = yields + 1 end,
      progress = function(checked, total) progress[#progress + 1] = { checked, total } end })
    audit.BATCH, audit.FAST = batch, true
    assert(ok, v)
    assert.is_true(v.ok, v.problem)
    assert.same({ { 4, N }, { 8, N }, { 12, N } }, progress)
    assert.equal(2, yields)
    t.close()
  end)

  it("writes the moved checkpoint after the answer when asked to (the admin method)", function()
    local t = trail()
    local before = H.read(t.checkpoint)
    H.async(function()
      local v = t.w:verify({ incremental = true, checkpoint_later = true })
      assert.is_true(v.ok, v.problem)
      assert.same({ CP, N - CP }, { v.from, v.checked })
      assert.equal(before, H.read(t.checkpoint))    -- not yet
      loop.sleep(0.01)
      assert.equal(N, assert(audit.read_checkpoint(t.master, t.checkpoint)).id)
      -- and the next verify starts there
      v = t.w:verify({ incremental = true, checkpoint_later = true })
      assert.same({ true, N, 0 }, { v.ok, v.from, v.checked })
      loop.sleep(0.01)
    end)
    t.close()
  end)

  it("runs one verify at a time on a writer", function()
    local t = trail()
    local inner
    local batch = audit.BATCH
    audit.BATCH, audit.FAST = 4, false
    local v = t.w:verify({ incremental = true, yield = function()
      if not inner then inner = table.pack(t.w:verify()) end
    end })
    audit.BATCH, audit.FAST = batch, true
    assert.is_true(v.ok, v.problem)
    assert.is_nil(inner[1])
    assert.truthy(inner[2]:find("running already", 1, true))
    assert.is_true(t.w:verify().ok)         -- and again once it ended
    t.close()
  end)
end)
