-- The recipients policy through the agent socket against the simulator:
-- premium-rate and shared-cost numbers are refused by libphonenumber's
-- number type, whatever their prefix, and never reach Twilio.
local H = require("helpers")
local TW = require("twilio_env")

-- POSTs the simulator saw after request n
local function posts_since(sim, n)
  local count = 0
  for _, r in ipairs(sim.requests(n)) do
    if r.method == "POST" then count = count + 1 end
  end
  return count
end

describe("recipients by number type", function()
  local sim, srv, token
  setup(function()
    sim = TW.sim()
    -- calling codes, as the old setting wrote them: +33 and +41 are allowed
    srv = TW.server({ config = { policy_settings = { recipients = {
      per_recipient = 1000, daily_budget = 100000, countries = { "1", "33", "34", "41" } } } } })
    token = TW.connect_sim(srv, sim, "types")
  end)
  teardown(function() srv.stop() sim.stop() end)

  local function send(tool, args)
    return H.async(function()
      local c = TW.session(srv, token)
      local before = sim.last()
      local r = TW.call(c, tool, args)
      r.posts = posts_since(sim, before)
      c:close()
      return r
    end)
  end

  local refused = {
    { "+33836123456", "premium-rate" }, -- France 0836
    { "+41901123456", "premium-rate" }, -- Switzerland 0901
    { "+12469761234", "premium-rate" }, -- Barbados 976: NANP, not +1900
    { "+34901123456", "shared-cost" },  -- Spain 901
  }
  for _, case in ipairs(refused) do
    it("refuses " .. case[1] .. " (" .. case[2] .. ") before Twilio", function()
      for _, call in ipairs({
        { "twilio_send_sms", { to = case[1], body = "Your code is ready." } },
        { "twilio_send_whatsapp", { to = case[1], template_sid = TW.SIM.TEMPLATE,
                                    template_variables = { ["1"] = "Ana", ["2"] = "3pm" } } },
        { "twilio_verify_phone", { action = "send_code", to = case[1] } },
      }) do
        local r = send(call[1], call[2])
        assert.is_true(r.isError, r.text)
        assert.truthy(r.text:find("recipients", 1, true), r.text)
        assert.truthy(r.text:find(("the recipient is a %s number"):format(case[2]), 1, true), r.text)
        assert.equal(0, r.posts)
      end
    end)
  end

  it("sends to a mobile number of an allowed country", function()
    local r = send("twilio_send_sms", { to = "+33612345678", body = "Bonjour" })
    assert.is_nil(r.isError, r.text)
    assert.equal(1, r.posts)
  end)

  it("refuses a number libphonenumber finds invalid with the reason, before Twilio", function()
    local r = send("twilio_send_sms", { to = "+10000000000", body = "hi" })
    assert.is_true(r.isError)
    assert.truthy(r.text:find('`to` must be a valid phone number in E.164 format, like +14155550123'
      .. ' (got "+10000000000": not a valid number)', 1, true), r.text)
    assert.equal(0, r.posts)
  end)
end)
