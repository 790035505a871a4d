-- Storage faults on a real filesystem: the server's data directory is a
-- small tmpfs that the test fills up. A send whose write-ahead record is
-- not committed never reaches Twilio, a hold that cannot be stored does
-- not claim an escalation, the admin commands say what failed, and the
-- limits hold. Then pending records found at start are never sent.
-- store: sqlite only (a full filesystem under the SQLite file)
local H = require("helpers")
local TW = require("twilio_env")
local fullfs = require("fullfs")

local ANA, OTHER = TW.SIM.ANA, TW.SIM.OTHER

local function posts_since(sim, n)
  local out = 0
  H.async(function()
    for _, r in ipairs(sim.requests(n)) do
      if r.method == "POST" then out = out + 1 end
    end
  end)
  return out
end

describe("storage faults", function()
  local sim, srv, token, fs, dir

  setup(function()
    dir = H.tmpdir("storage")
    fs = fullfs.mount(dir .. "/data", "16m")
    sim = TW.sim()
    srv = H.server({ dir = dir, config = {
      policy_settings = { recipients = { per_recipient = 3, daily_budget = 100000 } },
    } })
    token = TW.connect_sim(srv, sim, "full")
  end)

  teardown(function()
    if srv then srv.stop() end
    if sim then sim.stop() end
    if fs then fs.free() fs.umount() end
  end)

  it("sends nothing whose record cannot be committed, says so, and logs it", function()
    local before = H.async(function() return sim.last() end)
    local ok = TW.with(srv, token, function(c)
      return TW.call(c, "twilio_send_sms", { to = ANA, body = "Before the disk filled." })
    end)
    assert.is_nil(ok.isError, ok.text)
    assert.equal(1, posts_since(sim, before))
    local n_records = #TW.sends(srv)

    fs.fill()
    before = H.async(function() return sim.last() end)
    -- ten sends to a recipient limited to three, and a WhatsApp template
    local answers = TW.with(srv, token, function(c)
      local out = {}
      for i = 1, 10 do
        out[#out + 1] = TW.call(c, "twilio_send_sms", { to = OTHER, body = "Full disk " .. i })
      end
      out[#out + 1] = TW.call(c, "twilio_send_whatsapp", { to = ANA, template_sid = TW.SIM.TEMPLATE,
        template_variables = { ["1"] = "Ana", ["2"] = "3pm" } })
      out[#out + 1] = TW.call(c, "twilio_verify_phone", { action = "send_code", to = ANA })
      return out
    end)
    for _, r in ipairs(answers) do
      assert.is_true(r.isError, r.text)
      assert.truthy(r.text:find("Not sent: storage unavailable", 1, true), r.text)
    end
    assert.equal(0, posts_since(sim, before))
    local log = H.read(srv.log)
    assert.truthy(log:find("could not be stored, so it was not sent", 1, true))

    fs.free()
    assert.equal(n_records, #TW.sends(srv))
  end)

  it("keeps the recipient limit: after the fault, three sends go out and the fourth is refused", function()
    local before = H.async(function() return sim.last() end)
    local answers = TW.with(srv, token, function(c)
      local out = {}
      for i = 1, 4 do out[i] = TW.call(c, "twilio_send_sms", { to = OTHER, body = "Space again " .. i }) end
      return out
    end)
    for i = 1, 3 do assert.is_nil(answers[i].isError, answers[i].text) end
    assert.is_true(answers[4].isError)
    assert.truthy(answers[4].text:find("Refused by policy recipients", 1, true), answers[4].text)
    assert.equal(3, posts_since(sim, before))
  end)

  it("does not claim an escalation it could not store", function()
    fs.fill()
    local r = TW.with(srv, token, function(c)
      return TW.call(c, "twilio_send_sms", { to = ANA, body = "card 4111111111111111" })
    end)
    fs.free()
    assert.is_true(r.isError)
    assert.is_nil(r.text:find("was opened", 1, true), r.text)
    assert.truthy(r.text:find("could not be stored", 1, true), r.text)
    assert.equal("not_stored", r.data.status)
    assert.is_nil(r.data.escalation_id)
    local list = srv.admin("escalations --tenant full --status all")
    assert.equal(0, #list.escalations)
  end)

  it("refuses tenant add and agent add with the reason, never a token", function()
    fs.fill()
    local out, code, err = srv.admin("agent add --tenant full --name second --type caioo")
    local tout, tcode, terr = srv.admin("tenant add other")
    fs.free()
    assert.equal(1, code)
    assert.truthy(err:find("could not add the agent", 1, true), err)
    assert.is_nil(err:find("sbt_", 1, true), err)
    assert.is_nil(tostring(out):find("sbt_", 1, true))
    assert.equal(1, tcode)
    assert.truthy(terr:find("could not add the tenant", 1, true), terr)
    assert.is_nil(tostring(tout):find("sbt_", 1, true))
    -- with space again both work
    local a, acode = srv.admin("agent add --tenant full --name second --type caioo")
    assert.equal(0, acode)
    assert.truthy(a.token:match("^sbt_"))
  end)

  it("marks a pending record failed at start, never sending it", function()
    srv.stop()
    -- a record committed as pending whose request never started (the
    -- in_flight update failed, or the process died between the two)
    TW.sql(srv, "INSERT INTO sends (tenant_id, agent_id, tool, action, recipient, request, body_hash, status,"
      .. " created_at, created_unix, updated_at) SELECT tenant_id, agent_id, tool, action, recipient, request,"
      .. " body_hash, 'pending', created_at, created_unix, updated_at FROM sends WHERE status = 'sent'"
      .. " ORDER BY id LIMIT 1")
    local id = math.tointeger(tonumber(TW.sql(srv, "SELECT max(id) FROM sends")))
    local before = H.async(function() return sim.last() end)
    srv.start()
    H.wait_for(function()
      local s = TW.sends(srv)
      return s[#s].status ~= "pending"
    end, 10, "recovery")
    local rows = TW.sends(srv)
    assert.equal(id, rows[#rows].id)
    assert.equal("failed", rows[#rows].status)
    assert.equal("not sent: interrupted before the request",
      TW.sql(srv, "SELECT error_message FROM sends WHERE id = " .. id):gsub("%s+$", ""))
    os.execute("sleep 0.3")
    assert.equal(0, posts_since(sim, before))
    -- and the audit trail says so
    local found
    for _, a in ipairs(TW.audit(srv)) do
      if type(a.detail) == "table" and a.detail.send_id == id then found = a end
    end
    assert.truthy(found, "no audit record of the pending send")
    assert.equal("failed", found.outcome)
  end)
end)
