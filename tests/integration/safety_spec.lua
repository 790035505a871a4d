-- Safety and accountability through the agent socket against the
-- simulator: the autonomous-sends gate, tiers, the Safety Gateway,
-- recipient limits, escalations, write-ahead sends and the audit trail.
local H = require("helpers")
local TW = require("twilio_env")
local json = require("switchboard.json")
local loop = require("core.loop")

local ANA, OTHER = TW.SIM.ANA, TW.SIM.OTHER

-- Twilio requests (method path) the simulator saw after n.
local function seen_since(sim, n)
  local out = {}
  for _, r in ipairs(sim.requests(n)) do out[#out + 1] = r.method .. " " .. r.path end
  return out
end

local function posts(list)
  local n = 0
  for _, r in ipairs(list) do if r:sub(1, 5) == "POST " then n = n + 1 end end
  return n
end

describe("autonomous sends", function()
  local sim, srv, token
  setup(function()
    sim = TW.sim()
    srv = TW.server()
    token = TW.connect_sim(srv, sim, "gate", nil, { sends = false })
  end)
  teardown(function() srv.stop() sim.stop() end)

  it("are off by default: sends and send_code never reach Twilio and open an escalation", function()
    H.async(function()
      local c = TW.session(srv, token)
      local before = sim.last()
      local calls = {
        { "twilio_send_sms", { to = ANA, body = "Your results are ready." } },
        { "twilio_send_whatsapp", { to = ANA, template_sid = TW.SIM.TEMPLATE, template_variables = { ["1"] = "Ana" } } },
        { "twilio_verify_phone", { action = "send_code", to = ANA } },
      }
      for _, call in ipairs(calls) do
        local r = TW.call(c, call[1], call[2])
        assert.is_true(r.isError, call[1])
        assert.truthy(r.text:find("autonomous sends are disabled", 1, true), r.text)
        assert.truthy(r.text:find("Escalation %d+"), r.text)
        assert.is_number(r.data.escalation_id)
      end
      assert.same({}, seen_since(sim, before))
      -- reads and check_code still reach Twilio
      local r = TW.call(c, "twilio_verify_phone", { action = "check_code", to = ANA, code = "123456" })
      assert.falsy(r.text:find("autonomous", 1, true))
      r = TW.call(c, "twilio_account_overview", { action = "list_phone_numbers" })
      assert.is_nil(r.isError)
      local seen = seen_since(sim, before)
      assert.equal(1, posts(seen))
      assert.truthy(seen[1]:find("VerificationCheck", 1, true))
      c:close()
    end)
    local esc = srv.admin("escalations --tenant gate")
    assert.equal(3, #esc.escalations)
    assert.equal("autonomous_sends", esc.escalations[1].policy)
  end)

  it("let sends through once turned on", function()
    srv.admin("twilio autonomous-sends on --tenant gate --confirm")
    H.async(function()
      local c = TW.session(srv, token)
      local before = sim.last()
      local r = TW.call(c, "twilio_send_sms", { to = ANA, body = "Now it goes out." })
      assert.is_nil(r.isError, r.text)
      assert.equal(1, posts(seen_since(sim, before)))
      c:close()
    end)
    srv.admin("twilio autonomous-sends off --tenant gate")
  end)

  it("run an approved escalation exactly once; a second approve and a reject do nothing", function()
    local id = H.async(function()
      local c = TW.session(srv, token)
      local r = TW.call(c, "twilio_send_sms", { to = OTHER, body = "Approved later." })
      c:close()
      return r.data.escalation_id
    end)
    local before = H.async(function() return sim.last() end)
    local a, code, err = srv.admin(("escalation approve %d --tenant gate"):format(id))
    assert.equal(0, code, err)
    assert.equal("approved", a.status)
    assert.is_false(a.result.is_error, a.result.text)
    assert.truthy(a.decided_by:find("uid", 1, true))
    local _, code2, err2 = srv.admin(("escalation approve %d --tenant gate"):format(id))
    assert.equal(1, code2)
    assert.truthy(err2:find("already decided", 1, true))
    local _, code3, err3 = srv.admin(("escalation reject %d --tenant gate --reason late"):format(id))
    assert.equal(1, code3)
    assert.truthy(err3:find("already decided", 1, true))
    H.async(function()
      assert.equal(1, posts(seen_since(sim, before)))
      local _, body = sim.control("GET", "messages")
      local n = 0
      for _, m in ipairs(body.messages) do if m.body == "Approved later." then n = n + 1 end end
      assert.equal(1, n)
    end)
    local shown = srv.admin(("escalation show %d --tenant gate"):format(id))
    assert.equal("Approved later.", shown.arguments.body)
    -- the approved run is in the audit trail with the approver
    local rows = TW.audit(srv)
    assert.equal("sent", rows[#rows].outcome)
  end)

  it("rejects an escalation with a reason, and refuses to approve after a disconnect", function()
    local ids = H.async(function()
      local c = TW.session(srv, token)
      local a = TW.call(c, "twilio_send_sms", { to = OTHER, body = "Reject me." })
      local b = TW.call(c, "twilio_send_sms", { to = OTHER, body = "Orphaned." })
      c:close()
      return { a.data.escalation_id, b.data.escalation_id }
    end)
    local _, code, err = srv.admin(("escalation reject %d --tenant gate"):format(ids[1]))
    assert.equal(1, code)
    assert.truthy(err:find("--reason", 1, true))
    local r = srv.admin(("escalation reject %d --tenant gate --reason 'not today'"):format(ids[1]))
    assert.equal("rejected", r.status)
    assert.equal("not today", r.note)
    srv.admin("twilio disconnect --tenant gate")
    local before = H.async(function() return sim.last() end)
    local _, code2, err2 = srv.admin(("escalation approve %d --tenant gate"):format(ids[2]))
    assert.equal(1, code2)
    assert.truthy(err2:find("no longer available", 1, true), err2)
    assert.equal("open", srv.admin(("escalation show %d --tenant gate"):format(ids[2])).status)
    assert.equal(before, H.async(function() return sim.last() end))
  end)
end)

describe("authorization tiers", function()
  local sim, srv
  setup(function()
    sim = TW.sim()
    srv = TW.server()
    TW.connect_sim(srv, sim, "tiers")
  end)
  teardown(function() srv.stop() sim.stop() end)

  local expected = {
    caioo = { owner = true, admin = true, vip = true, internal = false, external = false },
    personal_assistant = { owner = true, admin = true, vip = false, internal = true, external = false },
  }
  for agent_type, tiers in pairs(expected) do
    for tier, allowed in pairs(tiers) do
      it(("%s agent, %s sender: %s"):format(agent_type, tier, allowed and "served" or "refused"), function()
        local name = agent_type:sub(1, 2) .. "-" .. tier
        local a = srv.admin(("agent add --tenant tiers --name %s --type %s --tier %s --groups %s")
          :format(name, agent_type, tier, H.q(TW.GROUP)))
        H.async(function()
          local c = TW.session(srv, a.token)
          for _, call in ipairs({ { "twilio_account_overview", { action = "list_phone_numbers" } },
                                  { "twilio_send_sms", { to = ANA, body = "tier test" } } }) do
            local r = TW.call(c, call[1], call[2])
            if allowed then
              assert.is_nil(r.isError, r.text)
            else
              assert.is_true(r.isError)
              assert.truthy(r.text:find("authorization_tiers", 1, true), r.text)
              assert.truthy(r.text:find(tier .. " sender", 1, true), r.text)
            end
          end
          c:close()
        end)
      end)
    end
  end

  it("takes the sender from _meta only from a trusted orchestrator", function()
    local trusted = srv.admin(("agent add --tenant tiers --name orch --type caioo --tier external --trusted-sender --groups %s")
      :format(H.q(TW.GROUP)))
    local plain = srv.admin(("agent add --tenant tiers --name plain --type caioo --tier external --groups %s")
      :format(H.q(TW.GROUP)))
    H.async(function()
      for _, case in ipairs({ { trusted.token, "vip", false }, { trusted.token, "external", true },
                              { plain.token, "owner", true } }) do
        local c = TW.session(srv, case[1])
        local r = c:call("twilio_account_overview", { action = "list_phone_numbers" },
          { ["io.switchboard/sender"] = case[2] })
        assert.equal(case[3], r.result.isError == true)
        c:close()
      end
    end)
  end)
end)

describe("Safety Gateway and recipients", function()
  local sim, srv, token
  setup(function()
    sim = TW.sim()
    srv = TW.server({ config = { policy_settings = { recipients = { per_recipient = 3, daily_budget = 100000 } } } })
    token = TW.connect_sim(srv, sim, "gw")
  end)
  teardown(function() srv.stop() sim.stop() end)

  local function send(body, to, tool, extra)
    return H.async(function()
      local c = TW.session(srv, token)
      local before = sim.last()
      local args = { to = to or ANA, body = body }
      for k, v in pairs(extra or {}) do args[k] = v end
      local r = TW.call(c, tool or "twilio_send_sms", args)
      r.posts = posts(seen_since(sim, before))
      c:close()
      return r
    end)
  end

  local cases = {
    { "card", "Card 4111 1111 1111 1111 exp 12/29", "held", "payment card" },
    { "card in full-width digits", "Card ４１１１ １１１１ １１１１ １１１１", "held", "payment card" },
    { "card split by zero-width spaces", "Card 4111\u{200B}1111\u{200B}1111\u{200B}1111", "held", "payment card" },
    { "IBAN", "Pay to DE89 3704 0044 0532 0130 00 please", "held", "IBAN" },
    { "SSN", "My SSN is 219-09-9999", "held", "Social Security" },
    { "secret", "use key SK0123456789abcdef0123456789abcdef", "blocked", "secret" },
    { "PEM key", "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\n-----END RSA PRIVATE KEY-----", "blocked", "secret" },
    { "JWT", "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
      "blocked", "secret" },
    { "AWS access key", "aws AKIAIOSFODNN7EXAMPLE now", "blocked", "secret" },
  }
  for _, case in ipairs(cases) do
    it("stops a message with a " .. case[1] .. " before Twilio", function()
      local r = send(case[2], OTHER)
      assert.is_true(r.isError)
      assert.equal(0, r.posts)
      assert.truthy(r.text:find("safety_gateway", 1, true), r.text)
      if case[3] == "held" then
        assert.equal("held", r.data.status)
      else
        assert.truthy(r.text:find("Refused", 1, true), r.text)
      end
      assert.falsy(r.text:find("4111", 1, true))
      assert.falsy(r.text:find("SK0123", 1, true))
    end)
  end

  it("lets a Luhn-invalid number and plain text through", function()
    local r = send("Order 4111 1111 1111 1112 ships today", OTHER)
    assert.is_nil(r.isError, r.text)
    assert.equal(1, r.posts)
  end)

  local passes = {
    { "an IBAN with a wrong check digit", "Pay to DE88 3704 0044 0532 0130 00 please", "+14155550141" },
    { "an SSN with area 000", "Ref 000-12-3456", "+14155550142" },
    { "a price and a date", "Total 1,299.00 due 2026-12-01", "+14155550143" },
  }
  for _, case in ipairs(passes) do
    it("lets " .. case[1] .. " through", function()
      local r = send(case[2], case[3])
      assert.is_nil(r.isError, r.text)
      assert.equal(1, r.posts)
      assert.falsy(r.text:find("flagged", 1, true), r.text)
    end)
  end

  it("flags a phone number in the text", function()
    local r = send("Call me back on (415) 555-0177", "+14155550144")
    assert.is_nil(r.isError, r.text)
    assert.equal(1, r.posts)
    assert.truthy(r.text:find("flagged", 1, true), r.text)
  end)

  it("holds a card, and an approval sends exactly one message", function()
    local r = send("Card 4111 1111 1111 1111 on file", "+14155550145")
    assert.equal("held", r.data.status)
    local before = H.async(function() return sim.last() end)
    local a, code, err = srv.admin(("escalation approve %d --tenant gw"):format(r.data.escalation_id))
    assert.equal(0, code, err)
    assert.is_false(a.result.is_error, a.result.text)
    srv.admin(("escalation approve %d --tenant gw"):format(r.data.escalation_id))
    H.async(function()
      assert.equal(1, posts(seen_since(sim, before)))
      local _, body = sim.control("GET", "messages")
      local n = 0
      for _, m in ipairs(body.messages) do if m.to == "+14155550145" then n = n + 1 end end
      assert.equal(1, n)
    end)
  end)

  it("runs every policy again on approval: an approved card hold to a premium-rate number is refused", function()
    local r = send("Card 4111 1111 1111 1111 on file", "+19005550100")
    assert.equal("held", r.data.status)
    local before = H.async(function() return sim.last() end)
    local a = srv.admin(("escalation approve %d --tenant gw"):format(r.data.escalation_id))
    assert.is_true(a.result.is_error)
    assert.truthy(a.result.text:find("premium-rate", 1, true), a.result.text)
    assert.equal(before, H.async(function() return sim.last() end))
  end)

  it("counts concurrent sends against the per-recipient limit before any of them is recorded", function()
    local to = "+14155550150"
    local results = H.async(function()
      local out, done, me = {}, 0, coroutine.running()
      for i = 1, 6 do
        loop.spawn(function()
          local c = TW.session(srv, token)
          out[i] = TW.call(c, "twilio_send_whatsapp", { to = to, template_sid = TW.SIM.TEMPLATE,
            template_variables = { ["1"] = "Ana", ["2"] = "3pm" } })
          c:close()
          done = done + 1
          if done == 6 then loop.wake(me) end
        end)
      end
      if done < 6 then loop.wait() end
      return out
    end)
    local sent, refused = 0, 0
    for _, r in ipairs(results) do
      if r.isError then
        assert.truthy(r.text:find("at most 3 sends", 1, true), r.text)
        refused = refused + 1
      else
        sent = sent + 1
      end
    end
    assert.equal(3, sent)
    assert.equal(3, refused)
  end)

  it("flags an email address: sent, and marked in the audit record", function()
    local r = send("Write to ana@example.com", OTHER)
    assert.is_nil(r.isError, r.text)
    assert.equal(1, r.posts)
    assert.truthy(r.text:find("flagged", 1, true))
    local rows = TW.audit(srv)
    assert.equal("flag", rows[#rows].decision)
  end)

  it("blocks a secret in a WhatsApp template variable", function()
    local r = send(nil, ANA, "twilio_send_whatsapp", { template_sid = TW.SIM.TEMPLATE,
      template_variables = { ["1"] = "Ana", ["2"] = "SK0123456789abcdef0123456789abcdef" } })
    assert.is_true(r.isError)
    assert.equal(0, r.posts)
    assert.truthy(r.text:find("template variable", 1, true), r.text)
  end)

  it("never keeps a held card number in the database in the clear", function()
    send("Card 5555 5555 5555 4444 for the order", OTHER)
    local bytes = (H.read(srv.dir .. "/data/switchboard.db") or "") .. (H.read(srv.dir .. "/data/switchboard.db-wal") or "")
    assert.falsy(bytes:find("5555 5555 5555 4444", 1, true))
  end)

  it("refuses the fourth send to one recipient inside the window", function()
    local to = "+14155550131"
    for i = 1, 3 do
      local r = send("Reminder " .. i, to)
      assert.is_nil(r.isError, r.text)
    end
    local r = send("Reminder 4", to)
    assert.is_true(r.isError)
    assert.equal(0, r.posts)
    assert.truthy(r.text:find("at most 3 sends", 1, true), r.text)
  end)

  it("refuses an opted-out recipient locally after Twilio's 21610", function()
    local r = send("Hello", TW.SIM.OPTED_OUT)
    assert.is_true(r.isError)
    assert.equal(1, r.posts)
    assert.truthy(r.text:find("21610", 1, true), r.text)
    r = send("Hello again", TW.SIM.OPTED_OUT)
    assert.is_true(r.isError)
    assert.equal(0, r.posts)
    assert.truthy(r.text:find("opted out", 1, true), r.text)
  end)

  it("refuses other countries, premium-rate numbers and short codes", function()
    for _, to in ipairs({ "+447400123456", "+19005550123" }) do
      local r = send("Hi", to)
      assert.is_true(r.isError)
      assert.equal(0, r.posts)
      assert.truthy(r.text:find("recipients", 1, true), r.text)
    end
  end)
end)

describe("write-ahead sends and the audit trail", function()
  local sim, srv, token
  setup(function()
    sim = TW.sim()
    srv = TW.server()
    token = TW.connect_sim(srv, sim, "wal")
  end)
  teardown(function() srv.stop() sim.stop() end)

  it("reports a dropped send as unknown, never resends it, and reconciles it at restart", function()
    local r = H.async(function()
      local c = TW.session(srv, token)
      -- a read first, so a keep-alive connection to the simulator exists
      TW.call(c, "twilio_account_overview", { action = "list_phone_numbers" })
      sim.faults({ { match = { method = "POST", path_pattern = "/Messages%.json$" }, action = "drop", process = true } })
      local before = sim.last()
      local out = TW.call(c, "twilio_send_sms", { to = ANA, body = "Dropped but delivered." })
      out.posts = posts(seen_since(sim, before))
      c:close()
      return out
    end)
    assert.is_true(r.isError)
    assert.equal(1, r.posts)
    assert.truthy(r.text:lower():find("unknown", 1, true), r.text)
    local rows = TW.sends(srv)
    assert.equal("unknown", rows[#rows].status)
    srv.stop()
    srv.start()
    H.wait_for(function()
      local s = TW.sends(srv)
      return s[#s].status == "sent"
    end, 10, "reconciliation")
    rows = TW.sends(srv)
    assert.truthy(rows[#rows].sid:match("^SM"))
    H.async(function()
      local _, body = sim.control("GET", "messages")
      local n = 0
      for _, m in ipairs(body.messages) do if m.body == "Dropped but delivered." then n = n + 1 end end
      assert.equal(1, n)
    end)
  end)

  it("writes one audit record per call, whatever its end, and audit verify finds an edit", function()
    local before = #TW.audit(srv)
    H.async(function()
      local c = TW.session(srv, token)
      TW.call(c, "twilio_send_sms", { to = "12345", body = "x" })                -- invalid
      TW.call(c, "twilio_send_sms", { to = ANA, body = "SK0123456789abcdef0123456789abcdef" }) -- blocked
      TW.call(c, "twilio_send_sms", { to = ANA, body = "card 4111111111111111" }) -- held
      TW.call(c, "twilio_send_sms", { to = ANA, body = "plain" })                 -- sent
      TW.call(c, "twilio_send_sms", { to = TW.SIM.OPTED_OUT, body = "x" })        -- failed
      TW.call(c, "twilio_lookup_phone", { phone_number = ANA })                   -- read
      c:close()
    end)
    local rows = TW.audit(srv)
    assert.equal(before + 6, #rows)
    local outcomes = {}
    for i = before + 1, #rows do outcomes[#outcomes + 1] = rows[i].outcome end
    assert.same({ "invalid", "denied", "held", "sent", "failed", "ok" }, outcomes)
    local v = srv.admin("audit verify")
    assert.is_true(v.ok)
    -- edit one record: found and named
    local target = math.tointeger(rows[before + 4].id)
    TW.sql(srv, ("UPDATE audit_log SET outcome = 'failed' WHERE id = %d"):format(target))
    local bad, code = srv.admin("audit verify --full")
    assert.equal(1, code)
    assert.is_false(bad.ok)
    assert.equal(target, bad.id)
    assert.truthy(bad.problem:find("changed", 1, true))
    local text = srv.admin_text("audit verify --full")
    assert.truthy(text:find("BROKEN at record " .. target, 1, true), text)
    TW.sql(srv, ("UPDATE audit_log SET outcome = 'sent' WHERE id = %d"):format(target))
    assert.is_true(srv.admin("audit verify --full").ok)
    -- delete one: found
    TW.sql(srv, ("DELETE FROM audit_log WHERE id = %d"):format(target))
    bad = srv.admin("audit verify --full")
    assert.is_false(bad.ok)
    assert.equal(target, bad.id)
  end)

  it("lists executions for at most 30 days and shows one in full", function()
    local ex = srv.admin("executions --tenant wal")
    assert.equal(7, ex.days)
    assert.truthy(#ex.executions >= 1)
    local e = ex.executions[1]
    assert.truthy(#e.calls >= 1)
    assert.is_string(e.calls[1].tool)
    local _, code, err = srv.admin("executions --tenant wal --days 31")
    assert.equal(1, code)
    assert.truthy(err:find("at most 30 days", 1, true))
    local full = srv.admin(("execution show %s --tenant wal"):format(H.q(e.id)))
    assert.equal(#e.calls, #full.calls)
    assert.is_table(full.calls[1].params)
    local text = srv.admin_text("executions --tenant wal --days 2")
    assert.truthy(text:find(e.id, 1, true))
  end)
end)

describe("crash safety", function()
  it("sends each message at most once across repeated kill -9 with sends in flight", function()
    local sim = TW.sim()
    local srv = TW.server({ config = { limits = { connections = 600 } } })
    local token = TW.connect_sim(srv, sim, "crash")
    local total, rounds = 500, 4
    local per_round = total // rounds
    H.async(function()
      sim.faults({ { match = { method = "POST", path_pattern = "/Messages%.json$" }, action = "delay",
                     delay_ms = 600, count = 100000 } })
    end)
    for round = 1, rounds do
      local results = {}
      H.async(function()
        local done, me = 0, coroutine.running()
        for i = 1, per_round do
          loop.spawn(function()
            local c = H.client(srv.agent_socket)
            if c then
              local r = c:initialize(token)
              if r and r.result then
                local to = ("+1415555%04d"):format(1000 + (round * 1000 + i) % 9000)
                results[#results + 1] = c:call("twilio_send_sms", { to = to, body = ("crash %d-%d"):format(round, i) })
              end
              c:close()
            end
            done = done + 1
            if done == per_round then loop.wake(me) end
          end)
        end
        loop.sleep(0.3 + 0.1 * round)
        srv.signal("KILL")
        if done < per_round then loop.wait() end
      end, 60)
      H.wait_for(function() return not srv.alive() end, 10, "the kill")
      local answered = 0
      for _, r in pairs(results) do if r and r.result then answered = answered + 1 end end
      print(("round %d: %d answered before the kill"):format(round, answered))
      srv.pid = nil
      srv.start()
    end
    H.async(function() sim.control("DELETE", "faults") end)
    -- let recovery finish: no pending or in_flight record, unknown ones reconciled
    H.wait_for(function()
      for _, r in ipairs(TW.sends(srv)) do
        if r.status == "pending" or r.status == "in_flight" then return false end
      end
      return true
    end, 30, "recovery")
    os.execute("sleep 1")
    local rows = TW.sends(srv)
    local counts = {}
    for _, r in ipairs(rows) do counts[r.status] = (counts[r.status] or 0) + 1 end
    assert.truthy(#rows > 0)
    for status in pairs(counts) do
      assert.truthy(status == "sent" or status == "failed" or status == "unknown", status)
    end
    local created = H.async(function()
      local _, body = sim.control("GET", "messages")
      return body.messages
    end)
    local bodies, sids = {}, {}
    for _, m in ipairs(created) do
      if m.body:match("^crash ") then
        assert.is_nil(bodies[m.body], "sent twice: " .. m.body)
        bodies[m.body] = true
        sids[m.sid] = true
      end
    end
    for _, r in ipairs(rows) do
      if r.status == "sent" then assert.is_true(sids[r.sid] == true, "record sent without a message") end
    end
    srv.stop()
    sim.stop()
    print(("crash test: %d records: %s"):format(#rows, json.encode(counts)))
  end)
end)
