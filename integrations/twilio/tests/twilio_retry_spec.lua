-- Retries and unknown outcomes through the tools, with the simulator's
-- fault scripts: a 429 Twilio did not process (20429) is retried at most 3
-- times with bounded, jittered waits and Retry-After honoured; Verify's
-- 429s (60202, 60203) are never retried; a send whose answer never came is
-- never resent and is reported as an unknown outcome.
local H = require("helpers")
local TW = require("twilio_env")

local S = TW.SIM
local MESSAGES = "/Messages%.json$"

describe("Twilio retries and unknown outcomes", function()
  local sim, srv, token

  setup(function()
    sim = TW.sim()
    -- a short client timeout, so that a send without an answer ends fast
    srv = TW.server({ config = { twilio = { timeout = 1 } } })
    token = TW.connect_sim(srv, sim, "acme")
  end)

  teardown(function()
    if srv then srv.stop() end
    if sim then sim.stop() end
  end)

  before_each(function()
    H.async(function() assert(sim.control("POST", "reset") == 200) end)
  end)

  local function with(fn, timeout)
    return TW.with(srv, token, fn, timeout)
  end

  -- Run fn; return its result and the Twilio requests it caused on `pattern`.
  local function traced(pattern, fn)
    local before = sim.last()
    local r = fn()
    local out = {}
    for _, q in ipairs(sim.requests(before)) do
      if q.path:find(pattern) then out[#out + 1] = q end
    end
    return r, out
  end

  local function statuses(reqs)
    local out = {}
    for i, q in ipairs(reqs) do out[i] = q.status end
    return out
  end

  it("retries three 429s (20429) with jittered waits within bounds, then sends once", function()
    local r, reqs = with(function(c)
      sim.faults({ { match = { method = "POST", path_pattern = MESSAGES }, action = "429", code = 20429, count = 3 } })
      return traced(MESSAGES, function()
        return TW.call(c, "twilio_send_sms", { to = S.ANA, body = "Third time lucky" })
      end)
    end)
    assert.is_nil(r.isError, r.text)
    assert.equal("sent", r.data.outcome)
    assert.same({ 429, 429, 429, 201 }, statuses(reqs))
    -- full jitter over min(3 s, 100 ms * 2^n): waits of at most 0.1, 0.2, 0.4 s
    for n = 1, 3 do
      local gap = reqs[n + 1].t - reqs[n].t
      assert.truthy(gap >= 0 and gap <= 0.1 * 2 ^ (n - 1) + 0.25,
        ("wait %d was %.3f s"):format(n, gap))
    end
    local a = TW.audit_last(srv, "twilio_send_sms")
    assert.equal("sent", a.outcome)
    assert.equal(3, a.retries)
    -- one message exists, not four
    H.async(function()
      local _, body = sim.control("GET", "messages")
      assert.equal(1, #body.messages)
    end)
  end)

  it("honours Retry-After on each 429", function()
    local r, reqs = with(function(c)
      sim.faults({ { match = { method = "POST", path_pattern = MESSAGES }, action = "429", code = 20429,
                     retry_after = 1, count = 3 } })
      return traced(MESSAGES, function()
        return TW.call(c, "twilio_send_sms", { to = S.ANA, body = "Patience" })
      end)
    end)
    assert.is_nil(r.isError, r.text)
    assert.same({ 429, 429, 429, 201 }, statuses(reqs))
    for n = 1, 3 do
      local gap = reqs[n + 1].t - reqs[n].t
      assert.truthy(gap >= 0.95 and gap <= 1.6, ("wait %d was %.3f s, Retry-After said 1"):format(n, gap))
    end
  end)

  it("gives up after four 429s with a clear rate-limit error, and nothing was sent", function()
    local r, reqs = with(function(c)
      sim.faults({ { match = { method = "POST", path_pattern = MESSAGES }, action = "429", code = 20429, count = 4 } })
      return traced(MESSAGES, function()
        return TW.call(c, "twilio_send_sms", { to = S.ANA, body = "Busy" })
      end)
    end)
    assert.is_true(r.isError)
    assert.truthy(r.text:find("rate-limiting", 1, true), r.text)
    assert.truthy(r.text:find("tried 4 times", 1, true), r.text)
    assert.truthy(r.text:find("Wait a minute", 1, true), r.text)
    assert.equal(20429, r.data.error.code)
    assert.is_true(r.data.rate_limited)
    assert.equal("failed", r.data.outcome)
    assert.same({ 429, 429, 429, 429 }, statuses(reqs))
    local a = TW.audit_last(srv, "twilio_send_sms")
    assert.equal("failed", a.outcome)
    assert.equal(3, a.retries)
    local sends = TW.sends(srv)
    assert.equal("failed", sends[#sends].status)
    H.async(function()
      local _, body = sim.control("GET", "messages")
      assert.equal(0, #body.messages)
    end)
  end)

  it("retries a read the same way", function()
    local r, reqs = with(function(c)
      sim.faults({ { match = { method = "GET", path_pattern = "^/v2/PhoneNumbers/" }, action = "429", count = 2 } })
      return traced("^/v2/PhoneNumbers/", function()
        return TW.call(c, "twilio_lookup_phone", { phone_number = S.ANA })
      end)
    end)
    assert.is_nil(r.isError, r.text)
    assert.same({ 429, 429, 200 }, statuses(reqs))
  end)

  it("never retries Verify's 60203: one request, and the attempt limit is explained", function()
    local r, reqs = with(function(c)
      for i = 1, 5 do
        local ok = TW.call(c, "twilio_verify_phone", { action = "send_code", to = S.OTHER })
        assert.is_nil(ok.isError, ("send %d: %s"):format(i, ok.text))
      end
      return traced("/Verifications$", function()
        return TW.call(c, "twilio_verify_phone", { action = "send_code", to = S.OTHER })
      end)
    end)
    assert.is_true(r.isError)
    assert.truthy(r.text:find("attempt limit", 1, true), r.text)
    assert.truthy(r.text:find("(error 60203)", 1, true), r.text)
    assert.truthy(r.text:find("wait at least 10 minutes", 1, true), r.text)
    assert.same({ 429 }, statuses(reqs))
    assert.equal("failed", r.data.outcome)
    local a = TW.audit_last(srv, "twilio_verify_phone")
    assert.equal("failed", a.outcome)
    assert.equal(0, a.retries)
  end)

  it("never retries a 429 with Verify's 60202 either", function()
    local r, reqs = with(function(c)
      sim.faults({ { match = { method = "POST", path_pattern = "/VerificationCheck$" }, action = "429", code = 60202 } })
      return traced("/VerificationCheck$", function()
        return TW.call(c, "twilio_verify_phone", { action = "check_code", to = S.ANA, code = "123456" })
      end)
    end)
    assert.is_true(r.isError)
    assert.truthy(r.text:find("attempt limit", 1, true), r.text)
    assert.same({ 429 }, statuses(reqs))
  end)

  it("reports a send that timed out as an unknown outcome, sent once and never again", function()
    local r, reqs, found = with(function(c)
      sim.faults({ { match = { method = "POST", path_pattern = MESSAGES }, action = "timeout", delay_ms = 3000,
                     process = true } })
      local res, rq = traced(MESSAGES, function()
        return TW.call(c, "twilio_send_sms", { to = S.ANA, body = "Did this arrive?" })
      end)
      -- what the agent is told to do: look before sending again
      local today = os.date("!%Y-%m-%d")
      local s = TW.call(c, "twilio_search_messages", { action = "search", to = S.ANA, date_sent_after = today })
      return res, rq, s
    end)
    assert.is_true(r.isError)
    assert.truthy(r.text:find("outcome is unknown", 1, true), r.text)
    assert.truthy(r.text:find("Do not resend", 1, true), r.text)
    assert.truthy(r.text:find("twilio_search_messages", 1, true), r.text)
    assert.equal("unknown", r.data.outcome)
    assert.equal(1, #reqs)
    assert.equal("timeout", reqs[1].fault)
    local a = TW.audit_last(srv, "twilio_send_sms")
    assert.equal("unknown", a.outcome)
    local sends = TW.sends(srv)
    assert.equal("unknown", sends[#sends].status)
    -- the simulator did create it, and the search shows it
    assert.is_nil(found.isError, found.text)
    local bodies = 0
    for _, m in ipairs(found.data.messages) do
      if m.body == "Did this arrive?" then bodies = bodies + 1 end
    end
    assert.equal(1, bodies)
  end)

  it("treats a 5xx on a send as an unknown outcome and does not resend", function()
    local r, reqs = with(function(c)
      sim.faults({ { match = { method = "POST", path_pattern = MESSAGES }, action = "500", process = true } })
      return traced(MESSAGES, function()
        return TW.call(c, "twilio_send_sms", { to = S.ANA, body = "Server trouble" })
      end)
    end)
    assert.is_true(r.isError)
    assert.truthy(r.text:find("outcome is unknown", 1, true), r.text)
    assert.same({ 500 }, statuses(reqs))
    assert.equal("unknown", TW.audit_last(srv, "twilio_send_sms").outcome)
  end)

  it("reports a 5xx on a read as Twilio's error, without retrying", function()
    local r, reqs = with(function(c)
      sim.faults({ { match = { method = "GET", path_pattern = "/Calls%.json$" }, action = "503" } })
      return traced("/Calls%.json$", function()
        return TW.call(c, "twilio_manage_calls", { action = "list_recent" })
      end)
    end)
    assert.is_true(r.isError)
    assert.truthy(r.text:find("internal error (HTTP 503)", 1, true), r.text)
    assert.same({ 503 }, statuses(reqs))
  end)
end)
