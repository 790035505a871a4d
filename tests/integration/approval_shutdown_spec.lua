-- SIGTERM while an approved escalation runs: the server finishes the
-- approval's send as it finishes agents' calls in flight, so the
-- escalation ends with its result and its send record settled (not left
-- "approved" with no result for a later start to sort out).
local H = require("helpers")
local TW = require("twilio_env")
local json = require("switchboard.json")

describe("an approval in progress at SIGTERM", function()
  local sim, srv, token
  setup(function()
    sim = TW.sim()
    srv = TW.server()
    token = TW.connect_sim(srv, sim, "clinic")
  end)
  teardown(function()
    srv.stop()
    sim.stop()
  end)

  it("is finished before the server stops", function()
    local held = TW.with(srv, token, function(c)
      return TW.call(c, "twilio_send_sms", { to = TW.SIM.ANA, body = "card 4111111111111111 for the visit" })
    end)
    local esc = assert(held.data and math.tointeger(held.data.escalation_id), held.text)
    -- Twilio holds the message POST for a while: the approval is then in
    -- the middle of its send when the server is told to stop
    local before = H.async(function()
      sim.faults({ { match = { method = "POST", path_pattern = "/Messages%.json$" }, action = "delay",
                     delay_ms = 1500, count = 1 } })
      return sim.last()
    end)
    os.execute(("%s admin --config %s --json escalation approve %d --tenant clinic >%s/approve.out 2>&1 &")
      :format(H.q(H.BIN), H.q(srv.conf), esc, H.q(srv.dir)))
    -- the send record exists (in flight) before the signal
    H.wait_for(function()
      for _, r in ipairs(TW.sends(srv)) do if r.status == "in_flight" then return true end end
      return false
    end, 30, "the approval's send to start")
    assert.truthy(srv.stop(30), "the server did not stop")
    local rows = TW.sends(srv)
    assert.equal(1, #rows)
    assert.equal("sent", rows[1].status, json.encode(rows))
    local e = H.sql_rows(srv, "SELECT status, result FROM escalations WHERE id = " .. esc)[1]
    assert.equal("approved", e.status)
    local result = json.decode(e.result ~= json.null and e.result or "null")
    assert.is_table(result, "the approval was cut off: no result")
    assert.equal("sent", result.data.outcome)
    local posts = 0
    H.async(function()
      for _, r in ipairs(sim.requests(before)) do if r.method == "POST" then posts = posts + 1 end end
    end)
    assert.equal(1, posts)
    srv.start()
  end)
end)
