-- The audit trail on a real server: `switchboard admin audit verify` finds
-- each tamper someone who can write the database (but has no master key)
-- can make, and a flagged call keeps its policy and reason.
local H = require("helpers")
local TW = require("twilio_env")
local audit = require("switchboard.audit")

local ANA, OTHER = TW.SIM.ANA, TW.SIM.OTHER

describe("admin audit verify on a real server", function()
  local sim, srv, token, anchor, older
  local N = 12

  -- The attacker's own connection to the database file.
  local function with_db(fn) H.with_store(srv, fn) end

  setup(function()
    sim = TW.sim()
    srv = TW.server()
    anchor = srv.dir .. "/data/audit.head"
    token = TW.connect_sim(srv, sim, "trail")
    H.async(function()
      local c = TW.session(srv, token)
      for i = 1, N do
        if i == 6 then older = H.read(anchor) end
        TW.call(c, "twilio_send_sms", { to = ANA, body = "Reminder " .. i })
      end
      c:close()
    end)
  end)
  teardown(function() srv.stop() sim.stop() end)

  local function verify_ok()
    local v, code = srv.admin("audit verify")
    assert.equal(0, code)
    assert.is_true(v.ok, v.problem)
    return v
  end

  it("says an intact trail is intact, anchored in a file of mode 0600 next to the database", function()
    local v = verify_ok()
    assert.truthy(v.records >= N)
    assert.equal(v.records, v.anchored)
    assert.equal(0, v.unanchored)
    local text = srv.admin_text("audit verify")
    assert.truthy(text:find(("audit trail intact: %d records"):format(v.records), 1, true), text)
    assert.equal("600", (H.sh("stat -c %a " .. H.q(anchor)):gsub("%s+", "")))
  end)

  local tampers = {
    { "an edited field", function(db)
        db:run("UPDATE audit_log SET outcome = 'failed' WHERE id = (SELECT max(id) - 3 FROM audit_log)")
      end, "was changed" },
    { "a float edited below its printed precision", function(db)
        local r = db:row("SELECT id, duration_ms FROM audit_log WHERE kind = 'call' ORDER BY id DESC LIMIT 1")
        local d = r.duration_ms
        local e = d == 0 and 1e-300 or d + d * 4e-16
        assert.equal(("%.3f"):format(d), ("%.3f"):format(e))
        db:run("UPDATE audit_log SET duration_ms = ? WHERE id = ?", e, r.id)
      end, "was changed" },
    { "the first record deleted", function(db)
        db:run("DELETE FROM audit_log WHERE id = 1")
      end, "record 1 is missing" },
    { "a middle record deleted", function(db)
        db:run("DELETE FROM audit_log WHERE id = (SELECT max(id) / 2 FROM audit_log)")
      end, "is missing" },
    { "the last record deleted", function(db)
        db:run("DELETE FROM audit_log WHERE id = (SELECT max(id) FROM audit_log)")
      end, "were deleted" },
    { "the last 10 records deleted", function(db)
        db:run("DELETE FROM audit_log WHERE id > (SELECT max(id) - 10 FROM audit_log)")
      end, "were deleted" },
    { "every record deleted", function(db)
        db:run("DELETE FROM audit_log")
      end, "were deleted" },
    { "two records reordered", function(db)
        local hi = db:row("SELECT max(id) AS n FROM audit_log").n
        local a = db:row("SELECT * FROM audit_log WHERE id = ?", hi - 4)
        local b = db:row("SELECT * FROM audit_log WHERE id = ?", hi - 2)
        local SWAP = "UPDATE audit_log SET tool = ?, params = ?, detail = ?, hash = ?, prev_hash = ? WHERE id = ?"
        db:run(SWAP, b.tool, b.params, b.detail, b.hash, b.prev_hash, a.id)
        db:run(SWAP, a.tool, a.params, a.detail, a.hash, a.prev_hash, b.id)
      end, "does not follow" },
    { "a forged record appended with a correct plain hash", function(db)
        local last = db:row("SELECT * FROM audit_log ORDER BY id DESC LIMIT 1")
        local f = { id = last.id + 1, at = last.at, kind = "call", tenant_id = last.tenant_id, tool = "twilio_send_sms",
                    params = "{}", policies = "[]", outcome = "sent", retries = 0, duration_ms = 12.5 }
        db:run("INSERT INTO audit_log (id, at, kind, tenant_id, tool, params, policies, outcome, retries, duration_ms,"
          .. " prev_hash, hash) VALUES (?, ?, 'call', ?, ?, '{}', '[]', 'sent', 0, 12.5, ?, ?)",
          f.id, f.at, f.tenant_id, f.tool, last.hash, audit.plain_hash(last.hash, f))
      end, "record" },
    { "the whole chain recomputed with SHA-256 after an edit", function(db)
        db:run("UPDATE audit_log SET outcome = 'failed' WHERE id = 5")
        local prev = audit.GENESIS
        for _, r in ipairs(assert(db:query("SELECT * FROM audit_log ORDER BY id"))) do
          local h = audit.plain_hash(prev, r)
          db:run("UPDATE audit_log SET prev_hash = ?, hash = ? WHERE id = ?", prev, h, r.id)
          prev = h
        end
      end, "record" },
    { "the anchor replaced with an older copy", function()
        H.write(anchor, assert(older, "no anchor file"))
      end, "older copy" },
    { "the anchor deleted", function()
        os.remove(anchor)
      end, "missing" },
  }

  for _, c in ipairs(tampers) do
    local name, tamper, says = table.unpack(c)
    it("finds " .. name, function()
      local saved = H.read(anchor)
      TW.sql(srv, "DROP TABLE IF EXISTS saved; CREATE TABLE saved AS SELECT * FROM audit_log")
      with_db(tamper)
      -- the tampers are below the last verify's checkpoint: the full walk finds each
      local v, code = srv.admin("audit verify --full")
      local text = srv.admin_text("audit verify --full")
      -- put everything back as it was
      TW.sql(srv, "DELETE FROM audit_log; INSERT INTO audit_log SELECT * FROM saved; DROP TABLE saved")
      if saved then
        H.write(anchor, saved)
        os.execute("chmod 600 " .. H.q(anchor))
      end
      assert.equal(1, code, name .. " was not found: " .. text)
      assert.is_false(v.ok)
      assert.truthy(v.problem:find(says, 1, true), v.problem)
      assert.truthy(text:find("AUDIT TRAIL BROKEN", 1, true), text)
      verify_ok()
    end)
  end

  it("keeps the policy and reason of a flagged call in its audit record, shown by execution show", function()
    local r = H.async(function()
      local c = TW.session(srv, token)
      c.id = c.id + 1
      c:send({ id = c.id, method = "tools/call", params = { name = "twilio_send_sms",
        arguments = { to = OTHER, body = "Write to ana@example.com" },
        _meta = { ["io.switchboard/execution"] = "flagged-run" } } })
      local msg = assert(c:wait(c.id, 30))
      c:close()
      return msg.result
    end)
    assert.is_nil(r.isError)
    assert.truthy(r.content[1].text:find("flagged", 1, true))
    local ex = srv.admin("execution show flagged-run --tenant trail")
    local call = ex.calls[#ex.calls]
    assert.equal("flag", call.decision)
    assert.equal("sent", call.outcome)
    assert.is_table(call.detail, "no detail")
    assert.is_string(call.detail.sid)               -- the tool's own detail is kept too
    local flags = call.detail.flags
    assert.is_table(flags, "no flags in the audit record")
    assert.truthy(#flags >= 1)
    assert.is_string(flags[1].policy)
    assert.truthy(flags[1].policy ~= "")
    assert.truthy(flags[1].reason:lower():find("email", 1, true), flags[1].reason)
    verify_ok()
  end)

  it("after a restart on a trail cut short, records that in the trail and lists it as a warning", function()
    srv.stop()
    TW.sql(srv, "DELETE FROM audit_log WHERE id > (SELECT max(id) - 2 FROM audit_log)")
    srv.start()
    local v = verify_ok()
    assert.equal(1, #v.warnings)
    assert.truthy(v.warnings[1]:find("did not match its anchor", 1, true), v.warnings[1])
    local text = srv.admin_text("audit verify")
    assert.truthy(text:find("warning: record %d+ %(.-%): at start the trail did not match its anchor: the trail ends at"),
      text)
    assert.truthy(H.read(srv.log):find("audit: the trail ends at record", 1, true))
  end)
end)
