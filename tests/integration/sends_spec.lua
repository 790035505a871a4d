-- Write-ahead sends against the simulator: a call given up (deadline or
-- the client's cancel) sends nothing afterwards; a WhatsApp template whose
-- outcome is unknown is reconciled; an approval interrupted by kill -9 is
-- completed or reopened, exactly once, and every send that may have
-- reached Twilio has its audit record.
local H = require("helpers")
local TW = require("twilio_env")
local loop = require("core.loop")

local ANA = TW.SIM.ANA

-- Twilio requests the simulator saw after n, as "METHOD path".
local function seen(sim, n)
  return H.async(function()
    local out = {}
    for _, r in ipairs(sim.requests(n)) do out[#out + 1] = r.method .. " " .. r.path end
    return out
  end)
end

local function count(list, pattern)
  local n = 0
  for _, s in ipairs(list) do if s:find(pattern) then n = n + 1 end end
  return n
end

local function last_n(sim) return H.async(function() return sim.last() end) end

local function sim_messages(sim)
  return H.async(function()
    local _, body = sim.control("GET", "messages")
    return body.messages
  end)
end

-- Wait until the audit trail has more than n call records.
local function audit_after(srv, n)
  H.wait_for(function() return #TW.audit(srv) > n end, 10, "the call's audit record")
end

local TEMPLATE_ARGS = { to = ANA, template_sid = TW.SIM.TEMPLATE, template_variables = { ["1"] = "Ana", ["2"] = "3pm" } }

describe("a call given up", function()
  local sim, srv, token
  setup(function()
    sim = TW.sim()
    srv = TW.server({ config = { limits = { call_seconds = 1 } } })
    token = TW.connect_sim(srv, sim, "cancel")
  end)
  teardown(function() srv.stop() sim.stop() end)

  it("at its deadline during the template lookup never sends the message", function()
    H.async(function()
      sim.faults({ { match = { method = "GET", path_pattern = "/ApprovalRequests$" }, action = "delay",
                     delay_ms = 2500 } })
    end)
    local before, audited, records = last_n(sim), #TW.audit(srv), #TW.sends(srv)
    local r = TW.with(srv, token, function(c) return TW.call(c, "twilio_send_whatsapp", TEMPLATE_ARGS) end)
    assert.is_true(r.isError)
    assert.truthy(r.text:find("did not finish within 1 seconds", 1, true), r.text)
    -- the handler ends once the lookup answers: then nothing may follow
    audit_after(srv, audited)
    local list = seen(sim, before)
    assert.equal(1, count(list, "^GET .*/ApprovalRequests$"))
    assert.equal(0, count(list, "^POST "), table.concat(list, ", "))
    assert.equal(records, #TW.sends(srv))
    local rows = TW.audit(srv)
    assert.equal("cancelled", rows[#rows].detail.outcome)
  end)

  it("cancelled by the client during the template lookup never sends the message", function()
    H.async(function()
      sim.faults({ { match = { method = "GET", path_pattern = "/ApprovalRequests$" }, action = "delay",
                     delay_ms = 800 } })
    end)
    local before, audited, records = last_n(sim), #TW.audit(srv), #TW.sends(srv)
    TW.with(srv, token, function(c)
      c:send({ id = 77, method = "tools/call", params = { name = "twilio_send_whatsapp", arguments = TEMPLATE_ARGS } })
      while #sim.requests(before) == 0 do loop.sleep(0.05) end
      c:send({ method = "notifications/cancelled", params = { requestId = 77, reason = "user stopped it" } })
      -- no answer comes to a cancelled request
      local msg = c:recv(1.5)
      assert.is_nil(msg and msg.id == 77 and msg or nil)
    end)
    audit_after(srv, audited)
    local list = seen(sim, before)
    assert.equal(0, count(list, "^POST "), table.concat(list, ", "))
    assert.equal(records, #TW.sends(srv))
  end)

  it("while waiting to retry a 429 does not try again", function()
    H.async(function()
      sim.faults({ { match = { method = "POST", path_pattern = "/Messages%.json$" }, action = "429", code = 20429,
                     retry_after = 2 } })
    end)
    local before, audited = last_n(sim), #TW.audit(srv)
    local r = TW.with(srv, token, function(c)
      return TW.call(c, "twilio_send_sms", { to = ANA, body = "Retry after the deadline?" })
    end)
    assert.is_true(r.isError)
    audit_after(srv, audited)
    assert.equal(1, count(seen(sim, before), "^POST "))
    local rows = TW.sends(srv)
    assert.equal("failed", rows[#rows].status)
    local msg = TW.sql(srv, "SELECT error_message FROM sends WHERE id = " .. math.tointeger(rows[#rows].id))
    assert.truthy(msg:find("cancelled", 1, true), msg)
  end)
end)

describe("a WhatsApp template send with an unknown outcome", function()
  it("is reconciled by its template text at the next start", function()
    local sim = TW.sim()
    local srv = TW.server()
    local token = TW.connect_sim(srv, sim, "tmpl")
    local r = TW.with(srv, token, function(c)
      TW.call(c, "twilio_account_overview", { action = "list_phone_numbers" })
      sim.faults({ { match = { method = "POST", path_pattern = "/Messages%.json$" }, action = "drop", process = true } })
      return TW.call(c, "twilio_send_whatsapp", TEMPLATE_ARGS)
    end)
    assert.is_true(r.isError)
    assert.truthy(r.text:lower():find("unknown", 1, true), r.text)
    local rows = TW.sends(srv)
    assert.equal("unknown", rows[#rows].status)
    -- another template message to the same number that is not this one
    TW.with(srv, token, function(c)
      TW.call(c, "twilio_send_whatsapp", { to = ANA, template_sid = TW.SIM.TEMPLATE,
        template_variables = { ["1"] = "Bob", ["2"] = "4pm" } })
    end)
    srv.stop()
    srv.start()
    H.wait_for(function() return TW.sends(srv)[#rows].status == "sent" end, 10, "reconciliation")
    local sid = TW.sends(srv)[#rows].sid
    local match
    for _, m in ipairs(sim_messages(sim)) do if m.sid == sid then match = m end end
    assert.truthy(match, "the reconciled SID is not in the simulator")
    assert.equal("Hi Ana, your appointment is at 3pm.", match.body)
    -- reconciliation is in the audit trail
    local found
    for _, a in ipairs(TW.audit(srv)) do
      if type(a.detail) == "table" and a.detail.send_id == rows[#rows].id and a.outcome == "sent" then found = a end
    end
    assert.truthy(found, "no audit record of the reconciliation")
    srv.stop()
    sim.stop()
  end)
end)

describe("an approved escalation interrupted by kill -9", function()
  local sim, srv, token
  setup(function()
    sim = TW.sim()
    srv = TW.server()
    token = TW.connect_sim(srv, sim, "appr", nil, { sends = false })
  end)
  teardown(function() srv.stop() sim.stop() end)

  local function escalate(tool, args)
    local r = TW.with(srv, token, function(c) return TW.call(c, tool, args) end)
    assert.truthy(r.data and r.data.escalation_id, r.text)
    return math.tointeger(r.data.escalation_id)
  end

  -- Start `escalation approve` in the background.
  local function approve_async(id)
    os.execute(("%s admin --config %s --json escalation approve %d --tenant appr >/dev/null 2>&1 &")
      :format(H.q(H.BIN), H.q(srv.conf), id))
  end

  local function kill_and_restart()
    srv.signal("KILL")
    H.wait_for(function() return not srv.alive() end, 10, "the kill")
    srv.pid = nil
    srv.start()
  end

  local function messages_with(body)
    local n = 0
    for _, m in ipairs(sim_messages(sim)) do if m.body == body then n = n + 1 end end
    return n
  end

  it("with its send in flight is completed from its send record, once", function()
    local body = "Approved, then the server died."
    local id = escalate("twilio_send_sms", { to = ANA, body = body })
    H.async(function()
      sim.faults({ { match = { method = "POST", path_pattern = "/Messages%.json$" }, action = "delay", delay_ms = 1500 } })
    end)
    local before = last_n(sim)
    approve_async(id)
    H.wait_for(function() return count(seen(sim, before), "^POST ") == 1 end, 10, "the approved send's POST")
    kill_and_restart()
    -- recovery finds the message once Twilio has created it
    H.wait_for(function() return messages_with(body) == 1 end, 10, "the message")
    srv.stop()
    srv.start()
    local e
    H.wait_for(function()
      e = srv.admin(("escalation show %d --tenant appr"):format(id))
      return type(e) == "table" and e.result ~= nil
    end, 10, "the escalation's result")
    assert.equal("approved", e.status)
    assert.is_false(e.result.is_error)
    assert.equal("sent", e.result.data.outcome)
    assert.truthy(e.result.text:find("Approved by", 1, true), e.result.text)
    local _, code, err = srv.admin(("escalation approve %d --tenant appr"):format(id))
    assert.equal(1, code)
    assert.truthy(err:find("already decided", 1, true), err)
    assert.equal(1, messages_with(body))
    -- the send's audit records
    local send = TW.sends(srv)
    send = send[#send]
    local outcomes = {}
    for _, a in ipairs(TW.audit(srv)) do
      if type(a.detail) == "table" and a.detail.send_id == send.id then outcomes[#outcomes + 1] = a.outcome end
    end
    assert.same({ "unknown", "sent" }, outcomes)
  end)

  it("before its send record is opened again and runs once when approved again", function()
    local id = escalate("twilio_send_whatsapp", TEMPLATE_ARGS)
    H.async(function()
      sim.faults({ { match = { method = "GET", path_pattern = "/ApprovalRequests$" }, action = "delay",
                     delay_ms = 3000 } })
    end)
    local before = last_n(sim)
    local n_before = messages_with("Hi Ana, your appointment is at 3pm.")
    approve_async(id)
    H.wait_for(function() return count(seen(sim, before), "ApprovalRequests") == 1 end, 10, "the template lookup")
    kill_and_restart()
    local e
    H.wait_for(function()
      e = srv.admin(("escalation show %d --tenant appr"):format(id))
      return type(e) == "table" and e.status == "open"
    end, 10, "the escalation to be open again")
    assert.truthy(e.note:find("interrupted by a restart", 1, true), e.note)
    H.async(function() sim.control("DELETE", "faults") end)
    local a, code, err = srv.admin(("escalation approve %d --tenant appr"):format(id))
    assert.equal(0, code, err)
    assert.equal("approved", a.status)
    assert.is_false(a.result.is_error, a.result.text)
    assert.equal(n_before + 1, messages_with("Hi Ana, your appointment is at 3pm."))
    local _, code2 = srv.admin(("escalation approve %d --tenant appr"):format(id))
    assert.equal(1, code2)
  end)
end)
