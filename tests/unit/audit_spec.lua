-- The audit trail's parameter scrubbing, its keyed chain and its anchor,
-- on real SQLite files: every tamper someone who can write the database
-- (but has no master key) can make is found.
local H = require("helpers")
local loop = require("core.loop")
local audit = require("switchboard.audit")
local db_mod = require("switchboard.db")
local store = require("core.store")
local vault = require("core.vault")
local cjson = require("cjson")

local function master_in(dir, name)
  local path = dir .. "/" .. (name or "master.key")
  assert(vault.create_master(path))
  return assert(vault.load_master(path))
end

local function call(i)
  return { tenant_id = 1, agent_id = 1, execution_id = "e", sender_tier = "owner", tool = "t" .. i,
           args = { n = i }, decision = "allow", policies = {}, outcome = "ok", duration_ms = i / 3 }
end

-- A trail of n call records, written one batch each; the anchor after
-- each record is kept in t.anchors[i].
local function trail(n)
  local t = { dir = H.tmpdir("audit") }
  t.master = master_in(t.dir)
  t.anchor = t.dir .. "/audit.head"
  t.db = assert(db_mod.open(t.dir .. "/a.db"))
  t.w = audit.new(t.db, t.master, { flush_ms = 0, anchor_file = t.anchor })
  t.anchors = {}
  for i = 1, n do
    assert(t.w:record(call(i)))
    assert(t.w:flush())             -- the anchor now, not on the next loop turn
    t.anchors[i] = H.read(t.anchor)
  end
  function t.verify() return audit.verify_trail(t.db, t.master, t.anchor) end
  function t.close()
    t.db:close()
    t.master:close()
    H.sh("rm -rf " .. H.q(t.dir))
  end
  return t
end

local function row(db, id) return db:row("SELECT * FROM audit_log WHERE id = ?", id) end

-- Recompute the plain SHA-256 chain over every record (what an attacker
-- without the key can do), marking them unkeyed.
local function rechain_plain(db)
  local prev = audit.GENESIS
  for _, r in ipairs(assert(db:query("SELECT * FROM audit_log ORDER BY id"))) do
    local h = audit.plain_hash(prev, r)
    assert(db:run("UPDATE audit_log SET chain = 0, prev_hash = ?, hash = ? WHERE id = ?", prev, h, r.id))
    prev = h
  end
end

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

  it("keeps the texts a tool declares it sends as bodies too (an email's subject)", function()
    local args = { to = "ana@example.com", subject = "Your results", body = "hello" }
    local red = audit.scrub(args, "redacted", { subject = true, body = true })
    assert.equal("[12 characters]", red.subject)
    assert.equal("ana@example.com", red.to)
    assert.equal("sha256:" .. vault.sha256_hex("Your results"),
      audit.scrub(args, "hash", { subject = true }).subject)
    assert.equal("Your results", audit.scrub(args, "full", { subject = true }).subject)
    assert.equal("Your results", audit.scrub(args, "redacted").subject)
  end)

  it("verifies an intact trail, continued by a second writer, and anchors it outside the database", function()
    local t = trail(5)
    local v = t.verify()
    assert.is_true(v.ok, v.problem)
    assert.same({ 5, 5, 0, 0 }, { v.records, v.anchored, v.unanchored, v.legacy })
    local st = H.sh("stat -c %a " .. H.q(t.anchor)):gsub("%s+", "")
    assert.equal("600", st)
    assert.truthy(H.read(t.anchor):find("^switchboard audit anchor v1\nid 5\n"))
    -- a second writer on the same file continues the chain
    local w2 = audit.new(t.db, t.master, { flush_ms = 0, anchor_file = t.anchor })
    w2:record(call(6))
    w2:flush()
    v = t.verify()
    assert.is_true(v.ok, v.problem)
    assert.equal(6, v.records)
    assert.equal(1, row(t.db, 6).chain)
    t.close()
  end)

  -- Each tamper on a fresh trail of 12 records: (name, tamper(t), what the
  -- problem says, the record it names or false).
  local N = 12
  local tampers = {
    { "an edited field", function(t)
        t.db:run("UPDATE audit_log SET outcome = 'failed' WHERE id = 3")
      end, "was changed", 3 },
    { "a float edited below its printed precision", function(t)
        local d = row(t.db, 4).duration_ms
        local e = d + d * 4e-16
        assert.are_not.equal(d, e)
        assert.equal(cjson.encode(d), cjson.encode(e))             -- 14 digits cannot tell them apart
        assert.equal(("%.3f"):format(d), ("%.3f"):format(e))
        t.db:run("UPDATE audit_log SET duration_ms = ? WHERE id = 4", e)
      end, "was changed", 4 },
    { "a record deleted and the ids after it renumbered", function(t)
        t.db:run("DELETE FROM audit_log WHERE id = 6")
        for id = 7, N do t.db:run("UPDATE audit_log SET id = ? WHERE id = ?", id - 1, id) end
      end, "record 6 does not follow", 6 },
    { "the first record deleted", function(t)
        t.db:run("DELETE FROM audit_log WHERE id = 1")
      end, "record 1 is missing", 1 },
    { "a middle record deleted", function(t)
        t.db:run("DELETE FROM audit_log WHERE id = 6")
      end, "record 6 is missing", 6 },
    { "the last record deleted", function(t)
        t.db:run("DELETE FROM audit_log WHERE id = ?", N)
      end, "ends at record 11 but its anchor reached record 12", N },
    { "the last 10 records deleted", function(t)
        t.db:run("DELETE FROM audit_log WHERE id > 2")
      end, "records 3 to 12 were deleted", 3 },
    { "every record deleted", function(t)
        t.db:run("DELETE FROM audit_log")
      end, "records 1 to 12 were deleted", 1 },
    { "two records reordered", function(t)
        local a, b = row(t.db, 2), row(t.db, 4)
        local SWAP = "UPDATE audit_log SET tool = ?, params = ?, duration_ms = ?, hash = ?, prev_hash = ?,"
          .. " anchored = ? WHERE id = ?"
        t.db:run(SWAP, b.tool, b.params, b.duration_ms, b.hash, b.prev_hash, b.anchored, 2)
        t.db:run(SWAP, a.tool, a.params, a.duration_ms, a.hash, a.prev_hash, a.anchored, 4)
      end, "does not follow", 2 },
    { "a forged record appended with a correct plain hash", function(t)
        local last = row(t.db, N)
        local f = call(99)
        f.id, f.at, f.kind, f.params, f.policies, f.retries = N + 1, last.at, "call", "{}", "[]", 0
        t.db:run("INSERT INTO audit_log (id, at, kind, tool, params, policies, outcome, retries, duration_ms,"
          .. " chain, prev_hash, hash) VALUES (?, ?, 'call', ?, '{}', '[]', 'ok', 0, ?, 0, ?, ?)",
          f.id, f.at, f.tool, f.duration_ms, last.hash, audit.plain_hash(last.hash, f))
      end, "unkeyed hash", N + 1 },
    { "a forged record appended with an HMAC under another key", function(t)
        local other = master_in(t.dir, "other.key")
        local last = row(t.db, N)
        local f = { id = N + 1, at = last.at, kind = "call", tool = "forged", params = "{}", policies = "[]",
                    outcome = "ok", retries = 0, duration_ms = 1.5, chain = 1, anchored = N }
        t.db:run("INSERT INTO audit_log (id, at, kind, tool, params, policies, outcome, retries, duration_ms,"
          .. " chain, anchored, prev_hash, hash) VALUES (?, ?, 'call', 'forged', '{}', '[]', 'ok', 0, 1.5, 1, ?, ?, ?)",
          f.id, f.at, N, last.hash, audit.mac(other, last.hash, f))
        other:close()
      end, "MAC does not match", N + 1 },
    { "the whole chain recomputed with SHA-256 after an edit", function(t)
        t.db:run("UPDATE audit_log SET outcome = 'failed' WHERE id = 7")
        rechain_plain(t.db)
      end, "unkeyed hash", 1 },
    { "an anchor claim edited", function(t)
        t.db:run("UPDATE audit_log SET anchored = 0 WHERE id = 9")
      end, "MAC does not match", 9 },
    { "the anchor replaced with an older copy", function(t)
        H.write(t.anchor, t.anchors[5])
      end, "older copy", false },
    { "the anchor deleted", function(t)
        os.remove(t.anchor)
      end, "is missing", false },
    { "the anchor edited", function(t)
        H.write(t.anchor, (t.anchors[N]:gsub("id 12\ncount 12", "id 11\ncount 11")))
      end, "does not verify", false },
    { "the tail deleted and the anchor rewritten in plain text", function(t)
        t.db:run("DELETE FROM audit_log WHERE id > 8")
        H.write(t.anchor, (t.anchors[N]:gsub("id 12\ncount 12\nhead %x+", "id 8\ncount 8\nhead "
          .. row(t.db, 8).hash)))
      end, "does not verify", false },
  }

  for _, c in ipairs(tampers) do
    local name, tamper, says, id = table.unpack(c)
    it("finds " .. name, function()
      local t = trail(N)
      assert.is_true(t.verify().ok)
      tamper(t)
      local v = t.verify()
      assert.is_false(v.ok, name .. " was not found")
      assert.truthy(v.problem:find(says, 1, true), v.problem)
      if id then assert.equal(id, v.id) end
      t.close()
    end)
  end

  it("reports the records of the last batch before a crash as not yet anchored; the writer anchors them", function()
    local t = trail(6)
    -- the batch of record 6 committed, its anchor never written
    H.write(t.anchor, t.anchors[5])
    local v = t.verify()
    assert.is_true(v.ok, v.problem)
    assert.same({ 6, 5, 1 }, { v.records, v.anchored, v.unanchored })
    -- the running writer knows it anchored record 6: for it this is a replaced anchor
    v = t.w:verify()
    assert.is_false(v.ok)
    assert.truthy(v.problem:find("older than what this server last wrote", 1, true), v.problem)
    -- at the next start the tail is anchored, nothing else is recorded
    H.write(t.anchor, t.anchors[5])
    local w = audit.new(t.db, t.master, { flush_ms = 0, anchor_file = t.anchor })
    v = w:verify()
    assert.is_true(v.ok, v.problem)
    assert.same({ 6, 6, 0 }, { v.records, v.anchored, v.unanchored })
    assert.same({}, v.warnings)
    t.close()
  end)

  it("records in the trail that it started on a trail cut short or with its anchor gone", function()
    local t = trail(8)
    t.db:run("DELETE FROM audit_log WHERE id > 5")
    audit.new(t.db, t.master, { flush_ms = 0, anchor_file = t.anchor })
    local r = row(t.db, 6)
    assert.equal("audit.reanchor", r.action)
    assert.truthy(r.params:find("ends at record 5 but its anchor reached record 8", 1, true), r.params)
    os.remove(t.anchor)
    local w = audit.new(t.db, t.master, { flush_ms = 0, anchor_file = t.anchor })
    w:record(call(9))
    local v = w:verify()
    assert.is_true(v.ok, v.problem)
    assert.equal(8, v.records)
    assert.equal(2, #v.warnings)
    assert.truthy(v.warnings[1]:find("record 6", 1, true))
    assert.truthy(v.warnings[2]:find("is missing", 1, true))
    -- the markers cannot be removed without the key
    t.db:run("DELETE FROM audit_log WHERE id = 6")
    assert.is_false(w:verify().ok)
    t.close()
  end)

  it("keeps committing when the anchor cannot be written, and anchors once it can", function()
    local t = trail(3)
    -- a directory in the way of the temporary file: the write fails
    assert(os.execute("mkdir " .. H.q(t.anchor .. ".tmp")))
    assert(os.execute("touch " .. H.q(t.anchor .. ".tmp/x")))
    assert.is_true(t.w:record(call(4)))
    local v = t.verify()
    assert.is_true(v.ok, v.problem)
    assert.same({ 4, 3, 1 }, { v.records, v.anchored, v.unanchored })
    assert(os.execute("rm -rf " .. H.q(t.anchor .. ".tmp")))
    assert.is_true(t.w:flush())
    v = t.verify()
    assert.same({ 4, 4, 0 }, { v.records, v.anchored, v.unanchored })
    t.close()
  end)

  it("upgrades a trail written with the plain SHA-256 chain: old records verified as before, bound by the key", function()
    local dir = H.tmpdir("audit")
    local path = dir .. "/old.db"
    -- a database of the previous schema, with records the previous writer made
    local old = assert(store.open(path))
    for v = 1, 3 do
      assert(old:exec(db_mod.migrations[v]))
      assert(old:set_user_version(v))
    end
    local prev = audit.GENESIS
    for i = 1, 3 do
      local r = call(i)
      r.id, r.at, r.kind, r.params, r.policies, r.retries = i, "2026-01-01T00:00:00Z", "call", "{}", "[]", 0
      r.duration_ms = math.floor(r.duration_ms * 1000 + 0.5) / 1000
      local h = audit.plain_hash(prev, r)
      assert(old:run("INSERT INTO audit_log (id, at, kind, tenant_id, agent_id, execution_id, sender_tier, tool,"
        .. " params, decision, policies, outcome, retries, duration_ms, prev_hash, hash)"
        .. " VALUES (?, ?, 'call', 1, 1, 'e', 'owner', ?, '{}', 'allow', '[]', 'ok', 0, ?, ?, ?)",
        i, r.at, r.tool, r.duration_ms, prev, h))
      prev = h
    end
    old:close()
    local db = assert(db_mod.open(path))
    local master = master_in(dir)
    local anchor = dir .. "/audit.head"
    local w = audit.new(db, master, { flush_ms = 0, anchor_file = anchor })
    for i = 4, 6 do w:record(call(i)) end
    local v = audit.verify_trail(db, master, anchor)
    assert.is_true(v.ok, v.problem)
    assert.same({ 6, 3 }, { v.records, v.legacy })
    assert.equal(0, row(db, 3).chain)
    assert.equal(1, row(db, 4).chain)
    -- an old record edited and the plain chain recomputed: the first keyed record no longer follows
    db:run("UPDATE audit_log SET outcome = 'failed' WHERE id = 2")
    prev = audit.GENESIS
    for i = 1, 3 do
      local r = row(db, i)
      local h = audit.plain_hash(prev, r)
      db:run("UPDATE audit_log SET prev_hash = ?, hash = ? WHERE id = ?", prev, h, i)
      prev = h
    end
    v = audit.verify_trail(db, master, anchor)
    assert.is_false(v.ok)
    assert.equal(4, v.id)
    w:flush()   -- its anchor now, not from a coroutine after the key is closed
    db:close()
    master:close()
    H.sh("rm -rf " .. H.q(dir))
  end)

  it("batches the anchor of call batches: one write for many, records meanwhile not yet anchored", function()
    local t = trail(2)
    local before = H.read(t.anchor)
    local w = audit.new(t.db, t.master, { flush_ms = 1000, anchor_ms = 3600000, anchor_file = t.anchor })
    H.async(function()
      for i = 3, 7 do
        assert.is_true(w:record(call(i)))
        assert.is_true(w:flush(true))   -- committed; the anchor is left for later
        loop.sleep(0.005)
      end
    end)
    assert.equal(before, H.read(t.anchor))
    local v = t.verify()
    assert.is_true(v.ok, v.problem)
    assert.same({ 7, 2, 5 }, { v.records, v.anchored, v.unanchored })
    -- the writer itself finds it intact (its verify anchors first), as does a stop
    v = w:verify()
    assert.is_true(v.ok, v.problem)
    assert.same({ 7, 7, 0 }, { v.records, v.anchored, v.unanchored })
    t.close()
  end)

  it("writes the anchor on the next loop turn once anchor_records records wait", function()
    local t = trail(1)
    local w = audit.new(t.db, t.master, { flush_ms = 1000, anchor_ms = 3600000, anchor_records = 3,
                                          anchor_file = t.anchor })
    H.async(function()
      for i = 2, 3 do
        w:record(call(i))
        w:flush(true)
      end
      loop.sleep(0.01)
      assert.same({ 3, 1 }, { t.verify().records, t.verify().anchored })
      w:record(call(4))
      w:flush(true)
      loop.sleep(0.01)
      assert.same({ 4, 4 }, { t.verify().records, t.verify().anchored })
    end)
    t.close()
  end)

  it("after kill -9 with the anchor lagging, verifies the records after it as not yet anchored", function()
    local t = trail(3)
    local script = t.dir .. "/crash.lua"
    H.write(script, ([[
      local audit = require("switchboard.audit")
      local db = assert(require("switchboard.db").open(%q))
      local master = assert(require("core.vault").load_master(%q))
      local w = audit.new(db, master, { flush_ms = 1000, anchor_ms = 3600000, anchor_file = %q })
      local loop = require("core.loop")
      loop.spawn(function()
        for i = 4, 9 do
          assert(w:record({ tenant_id = 1, agent_id = 1, execution_id = "e", sender_tier = "owner", tool = "t" .. i,
            args = { n = i }, decision = "allow", policies = {}, outcome = "ok", duration_ms = 1 }))
          assert(w:flush(true))
          loop.sleep(0.005)             -- the loop runs between the batches
        end
        local pid = io.open("/proc/self/stat"):read("l"):match("^(%%d+)")
        io.stdout:write("committed\n")
        io.stdout:flush()
        os.execute("kill -9 " .. pid)
        os.execute("sleep 5")
      end)
      loop.run()
    ]]):format(t.dir .. "/a.db", t.dir .. "/master.key", t.anchor))
    local out, code = H.sh(H.q(H.BIN) .. " exec " .. H.q(script) .. " 2>&1")
    assert.truthy(out:find("^committed\n"), out)
    assert.not_equal(0, code)
    local v = t.verify()
    assert.is_true(v.ok, v.problem)
    assert.same({ 9, 3, 6 }, { v.records, v.anchored, v.unanchored }, out)
    -- the next start anchors them and records nothing else
    local w = audit.new(t.db, t.master, { flush_ms = 0, anchor_file = t.anchor })
    v = w:verify()
    assert.is_true(v.ok, v.problem)
    assert.same({ 9, 9, 0 }, { v.records, v.anchored, v.unanchored })
    assert.same({}, v.warnings)
    t.close()
  end)
end)
