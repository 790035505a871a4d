-- The seven Twilio tools end to end: a real server, an agent on the agent
-- socket, a tenant connected with `twilio connect` to the Twilio simulator
-- (`switchboard sim`, tests/fixtures/sim.lua). Every tool and action,
-- every argument rule, the defaults, and each Twilio error the agent must
-- understand; what reached "Twilio" is read from the simulator's request
-- log.
local H = require("helpers")
local TW = require("twilio_env")
local json = require("switchboard.json")

local S = TW.SIM
local ACCT = "/2010-04-01/Accounts/" .. S.ACCOUNT

describe("Twilio tools through the agent socket", function()
  local sim, srv
  local tokens = {}

  setup(function()
    sim = TW.sim()
    srv = TW.server({ config = { tool_settings = {
      twilio_send_whatsapp = { recheck_seconds = 3 },
    } } })
    -- acme: fully connected, autonomous sends on
    tokens.acme = TW.connect_sim(srv, sim, "acme")
    -- bare: no WhatsApp number and no Verify service
    tokens.bare = TW.connect_sim(srv, sim, "bare", ("--default-number %s"):format(S.DEFAULT))
    -- voice: an account whose numbers cannot send SMS, with a Standard key
    tokens.voice = TW.connect_sim(srv, sim, "voice", "", { account = S.VOICE_ACCOUNT, sim_key = S.VOICE })
    -- gated: autonomous sends off
    tokens.gated = TW.connect_sim(srv, sim, "gated", nil, { sends = false })
  end)

  teardown(function()
    if srv then srv.stop() end
    if sim then sim.stop() end
  end)

  before_each(function()
    H.async(function() assert(sim.control("POST", "reset") == 200) end)
  end)

  -- Run fn(c) with an initialized session of tenant `who` (default acme).
  local function with(fn, who, timeout)
    return TW.with(srv, tokens[who or "acme"], fn, timeout)
  end

  local function is_error(r, ...)
    assert.is_true(r.isError, "expected an error, got: " .. r.text)
    for _, s in ipairs({ ... }) do
      assert.truthy(r.text:find(s, 1, true), ("%q not in %q"):format(s, r.text))
    end
  end

  local function ok(r)
    assert.is_nil(r.isError, "unexpected error: " .. r.text)
    assert.is_table(r.data)
    return r.data
  end

  -- Each case { args, text } of `tool` is refused with text in the error,
  -- and none of them reaches Twilio.
  local function refuses(c, tool, cases)
    local before = sim.last()
    for _, case in ipairs(cases) do
      is_error(TW.call(c, tool, case[1]), case[2])
    end
    assert.equal(0, #sim.requests(before))
  end

  -- the Twilio requests made by fn (run inside H.async)
  local function requests_of(fn)
    local before = sim.last()
    local r = fn()
    return r, (sim.requests(before))
  end

  describe("the tool list", function()
    it("offers the seven tools with truthful annotations and one set of working rules", function()
      with(function(c)
        local r = c:request("tools/list", {})
        local byname, names = {}, {}
        for _, t in ipairs(r.result.tools) do
          if t.name:match("^twilio_") then
            byname[t.name] = t
            names[#names + 1] = t.name
          end
        end
        assert.same({ "twilio_account_overview", "twilio_lookup_phone", "twilio_manage_calls",
          "twilio_search_messages", "twilio_send_sms", "twilio_send_whatsapp", "twilio_verify_phone" }, names)
        for _, n in ipairs({ "twilio_account_overview", "twilio_lookup_phone", "twilio_manage_calls",
                             "twilio_search_messages" }) do
          assert.is_true(byname[n].annotations.readOnlyHint, n)
          assert.is_true(byname[n].annotations.openWorldHint, n)
        end
        for _, n in ipairs({ "twilio_send_sms", "twilio_send_whatsapp", "twilio_verify_phone" }) do
          assert.is_false(byname[n].annotations.readOnlyHint, n)
          assert.is_false(byname[n].annotations.idempotentHint, n)
          assert.is_false(byname[n].annotations.destructiveHint, n)
        end
        for _, t in pairs(byname) do
          assert.is_string(t.title)
          assert.equal("object", t.outputSchema.type)
          assert.is_false(t.inputSchema.additionalProperties)
        end
        assert.equal(20, byname.twilio_search_messages.inputSchema.properties.limit.default)
        assert.equal(100, byname.twilio_search_messages.inputSchema.properties.limit.maximum)
        assert.same({ "line_type_intelligence" }, byname.twilio_lookup_phone.inputSchema.properties.fields.default)
        local instr = c.init.instructions
        assert.is_string(instr)
        for _, s in ipairs({ "E.164", "twilio_lookup_phone", "dates", "send_code", "check_code", "usage" }) do
          assert.truthy(instr:find(s, 1, true), s)
        end
        local _, n = instr:gsub("Working rules", "")
        assert.equal(1, n)
      end)
    end)
  end)

  describe("twilio_send_sms", function()
    it("sends from the default number and reports sid, status, segments; the audit and send record agree", function()
      local r, reqs = with(function(c)
        return requests_of(function()
          return TW.call(c, "twilio_send_sms", { to = S.ANA, body = "Your appointment is tomorrow at 10:00." })
        end)
      end)
      local d = ok(r)
      assert.truthy(d.sid:match("^SM%x+$"))
      assert.equal("queued", d.status)
      assert.equal(S.ANA, d.to)
      assert.equal(S.DEFAULT, d.from)
      assert.equal(1, d.segments)
      assert.equal("sent", d.outcome)
      assert.truthy(r.text:find(d.sid, 1, true))
      assert.truthy(r.text:find("Do not send it again", 1, true))
      assert.equal(1, #reqs)
      assert.equal("POST", reqs[1].method)
      assert.equal(ACCT .. "/Messages.json", reqs[1].path)
      assert.same({ To = S.ANA, From = S.DEFAULT, Body = "Your appointment is tomorrow at 10:00." }, reqs[1].form)
      assert.equal(S.MAIN[1], reqs[1].auth)
      local a = TW.audit_last(srv, "twilio_send_sms")
      assert.equal("sent", a.outcome)
      assert.equal(d.sid, a.detail.sid)
      assert.equal("queued", a.detail.status)
      local sends = TW.sends(srv)
      assert.equal("sent", sends[#sends].status)
      assert.equal(d.sid, sends[#sends].sid)
    end)

    it("counts segments and sends a media URL as MMS", function()
      with(function(c)
        local d = ok(TW.call(c, "twilio_send_sms", { to = S.ANA, body = ("x"):rep(161) }))
        assert.equal(2, d.segments)
        local r, reqs = requests_of(function()
          return TW.call(c, "twilio_send_sms", { to = S.ANA, body = "The map", media_url = "https://example.com/map.png" })
        end)
        d = ok(r)
        assert.truthy(d.sid:match("^MM%x+$"))
        assert.equal(1, d.num_media)
        assert.equal("https://example.com/map.png", reqs[1].form.MediaUrl)
      end)
    end)

    it("takes a body of 1,600 characters and refuses 1,601 without calling Twilio", function()
      with(function(c)
        ok(TW.call(c, "twilio_send_sms", { to = S.ANA, body = ("a"):rep(1600) }))
        local r, reqs = requests_of(function()
          return TW.call(c, "twilio_send_sms", { to = S.ANA, body = ("a"):rep(1601) })
        end)
        is_error(r, "`body` must have at most 1600 characters (got 1601)")
        assert.equal(0, #reqs)
        -- characters, not bytes
        ok(TW.call(c, "twilio_send_sms", { to = S.ANA, body = ("é"):rep(1600) }))
      end)
    end)

    it("names the field and the rule for each bad argument", function()
      with(function(c)
        local cases = {
          { { body = "hi" }, "`to` is required" },
          { { to = S.ANA }, "`body` is required" },
          { { to = "4155550123", body = "hi" }, "`to` must be a valid phone number in E.164 format" },
          { { to = "+1 415 555 0123", body = "hi" }, "E.164" },
          { { to = S.ANA, body = "" }, "`body` must have at least 1 characters" },
          { { to = S.ANA, body = "   " }, "`body` must contain some text" },
          { { to = S.ANA, body = "hi", media_url = "ftp://example.com/a.png" },
            "`media_url` must be an http:// or https:// URL" },
          { { to = S.ANA, body = "hi", from = S.DEFAULT }, "`from` is not a known argument" },
          { { to = S.ANA, body = 5 }, "`body` must be a string" },
        }
        refuses(c, "twilio_send_sms", cases)
      end)
    end)

    it("explains an opted-out recipient (21610): do not retry", function()
      with(function(c)
        local r = TW.call(c, "twilio_send_sms", { to = S.OPTED_OUT, body = "Hello again" })
        is_error(r, "opted out", "Do not retry", "(error 21610)")
        assert.equal(21610, r.data.error.code)
        assert.truthy(r.data.error.more_info:find("21610", 1, true))
        assert.equal("failed", r.data.outcome)
        local a = TW.audit_last(srv, "twilio_send_sms")
        assert.equal("failed", a.outcome)
        assert.equal(21610, a.detail.error_code)
        -- the opt-out is remembered: the next attempt does not reach Twilio
        local r2, reqs = requests_of(function()
          return TW.call(c, "twilio_send_sms", { to = S.OPTED_OUT, body = "Hello again" })
        end)
        is_error(r2, "opted out")
        assert.equal(0, #reqs)
      end)
    end)

    it("maps an invalid recipient (21211) to a plain sentence with what to do", function()
      with(function(c)
        -- a number libphonenumber finds valid that Twilio refuses
        sim.faults({ { match = { method = "POST", path_pattern = "/Messages%.json$" }, action = "400",
                       code = 21211, message = "Invalid 'To' Phone Number: " .. S.OTHER } })
        local r = TW.call(c, "twilio_send_sms", { to = S.OTHER, body = "hi" })
        is_error(r, "not a valid phone number", "twilio_lookup_phone", "(error 21211)")
        assert.equal("failed", r.data.outcome)
      end)
    end)

    it("refuses a number libphonenumber finds invalid before Twilio, with the reason", function()
      with(function(c)
        local r, reqs = requests_of(function()
          return TW.call(c, "twilio_send_sms", { to = "+1415555012", body = "hi" })
        end)
        is_error(r, '`to` must be a valid phone number in E.164 format, like +14155550123 (got "+1415555012": too short)')
        assert.equal(0, #reqs)
      end)
    end)

    it("says No phone number configured when the connection has no SMS number", function()
      local r, reqs = with(function(c)
        return requests_of(function() return TW.call(c, "twilio_send_sms", { to = S.ANA, body = "hi" }) end)
      end, "voice")
      is_error(r, "No phone number configured", "--default-number")
      assert.equal(0, #reqs)
      assert.equal("failed", TW.audit_last(srv, "twilio_send_sms").outcome)
    end)

    it("is held for a person while autonomous sends are off", function()
      local r, reqs = with(function(c)
        return requests_of(function() return TW.call(c, "twilio_send_sms", { to = S.ANA, body = "hi" }) end)
      end, "gated")
      is_error(r, "autonomous sends")
      assert.equal(0, #reqs)
    end)
  end)

  describe("twilio_send_whatsapp", function()
    it("sends an approved template with its variables as a ContentVariables JSON string", function()
      local r, reqs = with(function(c)
        return requests_of(function()
          return TW.call(c, "twilio_send_whatsapp", { to = S.ANA, template_sid = S.TEMPLATE,
            template_variables = { ["1"] = "Ana", ["2"] = "3pm" } })
        end)
      end)
      local d = ok(r)
      assert.equal("template", d.kind)
      assert.equal("appointment_reminder", d.template_name)
      assert.equal("sent", d.outcome)
      local post
      for _, q in ipairs(reqs) do if q.method == "POST" then post = q end end
      assert.equal(ACCT .. "/Messages.json", post.path)
      assert.equal("whatsapp:" .. S.ANA, post.form.To)
      assert.equal("whatsapp:" .. S.WHATSAPP, post.form.From)
      assert.equal(S.TEMPLATE, post.form.ContentSid)
      assert.same({ ["1"] = "Ana", ["2"] = "3pm" }, json.decode(post.form.ContentVariables))
      assert.is_nil(post.form.Body)
      assert.equal("/v1/Content/" .. S.TEMPLATE .. "/ApprovalRequests", reqs[1].path)
    end)

    it("sends a free-form message inside the 24-hour window", function()
      with(function(c)
        local d = ok(TW.call(c, "twilio_send_whatsapp", { to = S.ANA, body = "See you at 3pm!" }))
        assert.equal("freeform", d.kind)
        assert.equal("delivered", d.status)
        assert.equal(S.ANA, d.to)
        assert.equal(S.WHATSAPP, d.from)
      end)
    end)

    it("explains 63016 outside the window with the advice to use a template", function()
      with(function(c)
        local r = TW.call(c, "twilio_send_whatsapp", { to = S.LANDLINE, body = "Are you coming?" })
        is_error(r, "24-hour window", "template_sid", "(error 63016)")
        assert.equal(63016, r.data.error.code)
        assert.equal("failed", r.data.outcome)
        assert.equal("failed", TW.audit_last(srv, "twilio_send_whatsapp").outcome)
      end)
    end)

    it("refuses a rejected or unknown template without sending", function()
      with(function(c)
        local r, reqs = requests_of(function()
          return TW.call(c, "twilio_send_whatsapp", { to = S.ANA, template_sid = S.REJECTED })
        end)
        is_error(r, "rejected", "approved template")
        for _, q in ipairs(reqs) do assert.equal("GET", q.method) end
        r, reqs = requests_of(function()
          return TW.call(c, "twilio_send_whatsapp", { to = S.ANA, template_sid = "HX" .. ("9"):rep(32) })
        end)
        is_error(r, "was not found")
        for _, q in ipairs(reqs) do assert.equal("GET", q.method) end
      end)
    end)

    it("needs exactly one of body and template_sid, and checks each argument", function()
      with(function(c)
        local cases = {
          { { to = S.ANA, body = "hi", template_sid = S.TEMPLATE }, "exactly one of `body`" },
          { { to = S.ANA }, "exactly one of `body`" },
          { { to = S.ANA, body = "hi", template_variables = { ["1"] = "x" } }, "`template_variables` is only used with" },
          { { to = S.ANA, template_sid = S.TEMPLATE, media_url = "https://example.com/a.png" }, "`media_url` is only used with" },
          { { to = S.ANA, template_sid = "HX123" }, "`template_sid` must be an identifier of HX followed by 32" },
          { { to = S.ANA, template_sid = "MG" .. ("0"):rep(32) }, "`template_sid` must be an identifier of HX" },
          { { to = S.ANA, template_sid = S.TEMPLATE, template_variables = { ["1"] = 3 } },
            "`template_variables.1` must be a string" },
          { { to = "whatsapp:" .. S.ANA, body = "hi" }, "`to` must be a valid phone number in E.164 format" },
          { { body = "hi" }, "`to` is required" },
          { { to = S.ANA, body = ("a"):rep(1601) }, "at most 1600 characters" },
        }
        refuses(c, "twilio_send_whatsapp", cases)
      end)
    end)

    it("says so when no WhatsApp number is configured", function()
      local r, reqs = with(function(c)
        return requests_of(function() return TW.call(c, "twilio_send_whatsapp", { to = S.ANA, body = "hi" }) end)
      end, "bare")
      is_error(r, "No WhatsApp number configured", "--whatsapp-number")
      assert.equal(0, #reqs)
    end)
  end)

  describe("twilio_search_messages", function()
    it("searches newest first with a default limit of 20", function()
      local r, reqs = with(function(c)
        return requests_of(function() return TW.call(c, "twilio_search_messages", { action = "search" }) end)
      end)
      local d = ok(r)
      assert.equal(7, d.count)
      assert.is_false(d.more)
      assert.equal("SM00000000000000000000000000000007", d.messages[1].sid)
      assert.equal("SM00000000000000000000000000000001", d.messages[7].sid)
      assert.equal("2026-11-15T16:45:01Z", d.messages[1].date_sent)
      assert.equal(1, #reqs)
      assert.equal("20", reqs[1].params.PageSize)
    end)

    it("filters by to, from and exact sent times, and finds WhatsApp messages", function()
      with(function(c)
        local r, reqs = requests_of(function()
          return TW.call(c, "twilio_search_messages", { action = "search", date_sent_after = "2026-11-02T09:16:00Z",
            date_sent_before = "2026-11-03" })
        end)
        local d = ok(r)
        local sids = {}
        for i, m in ipairs(d.messages) do sids[i] = m.sid end
        assert.same({ "MM00000000000000000000000000000003", "SM00000000000000000000000000000002" }, sids)
        assert.equal("2026-11-02T00:00:00Z", reqs[1].params["DateSent>"])
        assert.equal("2026-11-04T00:00:00Z", reqs[1].params["DateSent<"])
        d = ok(TW.call(c, "twilio_search_messages", { action = "search", to = S.ANA, from = S.DEFAULT }))
        assert.equal(2, d.count)
        for _, m in ipairs(d.messages) do
          assert.equal(S.ANA, m.to)
          assert.equal(S.DEFAULT, m.from)
        end
        d = ok(TW.call(c, "twilio_search_messages", { action = "search", to = "whatsapp:" .. S.ANA }))
        assert.equal(1, d.count)
        assert.equal("SM00000000000000000000000000000005", d.messages[1].sid)
        d = ok(TW.call(c, "twilio_search_messages", { action = "search", date_sent_after = "2026-11-16" }))
        assert.equal(0, d.count)
        assert.truthy(r.text:find("Found 2 messages", 1, true))
      end)
    end)

    it("stops at the limit and says more exist; takes 100 but not 101", function()
      with(function(c)
        local d = ok(TW.call(c, "twilio_search_messages", { action = "search", limit = 3 }))
        assert.equal(3, d.count)
        assert.is_true(d.more)
        d = ok(TW.call(c, "twilio_search_messages", { action = "search", limit = 100 }))
        assert.equal(7, d.count)
        is_error(TW.call(c, "twilio_search_messages", { action = "search", limit = 101 }), "`limit` must be at most 100")
        is_error(TW.call(c, "twilio_search_messages", { action = "search", limit = 0 }), "`limit` must be at least 1")
        is_error(TW.call(c, "twilio_search_messages", { action = "search", limit = 2.5 }), "`limit` must be an integer")
      end)
    end)

    it("reports delivery details with the error explained, and a message's media", function()
      with(function(c)
        local d = ok(TW.call(c, "twilio_search_messages", { action = "get_details",
          message_sid = "SM00000000000000000000000000000004" }))
        assert.equal("undelivered", d.status)
        assert.equal(30003, d.error_code)
        assert.truthy(d.error_explanation:find("unreachable", 1, true))
        assert.equal(0.0079, d.price)
        assert.equal("Reminder: your prescription is ready.", d.body)
        d = ok(TW.call(c, "twilio_search_messages", { action = "get_media",
          message_sid = "MM00000000000000000000000000000003" }))
        assert.equal(2, d.count)
        local types = { d.media[1].content_type, d.media[2].content_type }
        table.sort(types)
        assert.same({ "image/jpeg", "image/png" }, types)
        for _, m in ipairs(d.media) do
          assert.truthy(m.sid:match("^ME%x+$"))
          assert.equal(sim.url .. ACCT .. "/Messages/MM00000000000000000000000000000003/Media/" .. m.sid, m.url)
        end
        local r = TW.call(c, "twilio_search_messages", { action = "get_media",
          message_sid = "SM00000000000000000000000000000001" })
        assert.equal(0, ok(r).count)
        assert.truthy(r.text:find("has no media", 1, true))
        is_error(TW.call(c, "twilio_search_messages", { action = "get_details",
          message_sid = "SM" .. ("9"):rep(32) }), "There is no message")
      end)
    end)

    it("checks each argument against the action", function()
      with(function(c)
        local cases = {
          { {}, "`action` is required" },
          { { action = "delete" }, "`action` must be one of" },
          { { action = "get_details" }, "`message_sid` is required for action \"get_details\"" },
          { { action = "get_media" }, "`message_sid` is required for action \"get_media\"" },
          { { action = "get_details", message_sid = "SM123" }, "`message_sid` must be SM or MM followed by 32" },
          { { action = "get_details", message_sid = "CA" .. ("0"):rep(32) }, "`message_sid` must be SM or MM" },
          { { action = "search", message_sid = "SM" .. ("0"):rep(32) }, "`message_sid` is not used with action \"search\"" },
          { { action = "get_details", message_sid = "SM" .. ("0"):rep(32), limit = 5 }, "`limit` is not used" },
          { { action = "search", to = "555" }, "`to` must be a phone number in E.164 format" },
          { { action = "search", from = "whatsapp:555" }, "`from` must be a phone number" },
          { { action = "search", date_sent_after = "2026-13-01" }, "`date_sent_after` must be an ISO 8601" },
          { { action = "search", date_sent_before = "yesterday" }, "`date_sent_before` must be an ISO 8601" },
          { { action = "search", date_sent_after = "2026-11-05", date_sent_before = "2026-11-01" },
            "`date_sent_after` (2026-11-05) is later than `date_sent_before`" },
        }
        refuses(c, "twilio_search_messages", cases)
      end)
    end)

    it("follows Twilio's next-page links as given until the limit", function()
      local srv2 = TW.server({ config = { tool_settings = { twilio_search_messages = { page_size = 2 } } } })
      local token = TW.connect_sim(srv2, sim, "paged")
      local ok2, err = pcall(H.async, function()
        local c = TW.session(srv2, token)
        local before = sim.last()
        local d = ok(TW.call(c, "twilio_search_messages", { action = "search", limit = 5 }))
        assert.equal(5, d.count)
        assert.is_true(d.more)
        local reqs = sim.requests(before)
        assert.equal(3, #reqs)
        assert.equal("2", reqs[1].params.PageSize)
        assert.truthy(reqs[2].params.PageToken, "the second request follows next_page_uri")
        assert.equal("1", reqs[2].params.Page)
        assert.equal("2", reqs[3].params.Page)
        c:close()
      end)
      srv2.stop()
      assert(ok2, err)
    end)
  end)

  describe("twilio_lookup_phone", function()
    it("asks for line_type_intelligence by default", function()
      local r, reqs = with(function(c)
        return requests_of(function() return TW.call(c, "twilio_lookup_phone", { phone_number = S.ANA }) end)
      end)
      local d = ok(r)
      assert.is_true(d.valid)
      assert.equal("US", d.country_code)
      assert.equal("(415) 555-0123", d.national_format)
      assert.equal("mobile", d.line_type_intelligence.type)
      assert.equal("Verizon Wireless", d.line_type_intelligence.carrier_name)
      assert.is_nil(d.caller_name)
      assert.equal("/v2/PhoneNumbers/%2B14155550123", reqs[1].path)
      assert.equal("line_type_intelligence", reqs[1].params.Fields)
    end)

    it("returns each requested package, and a package's error for that package alone", function()
      with(function(c)
        local d = ok(TW.call(c, "twilio_lookup_phone", { phone_number = S.ANA,
          fields = { "line_type_intelligence", "caller_name", "sim_swap" } }))
        assert.equal("ANA LOPEZ", d.caller_name.caller_name)
        assert.equal("CONSUMER", d.caller_name.caller_type)
        assert.equal("2026-10-01T10:00:00Z", d.sim_swap.last_sim_swap_date)
        assert.equal(0, #d.package_errors)
        local r = TW.call(c, "twilio_lookup_phone", { phone_number = "+14155550188",
          fields = { "line_type_intelligence", "sim_swap" } })
        d = ok(r)
        assert.equal("mobile", d.line_type_intelligence.type)
        assert.equal(60606, d.sim_swap.error_code)
        assert.same({ { field = "sim_swap", error_code = 60606, explanation = d.sim_swap.error_explanation } },
          d.package_errors)
        assert.truthy(r.text:find("sim_swap: not available", 1, true))
        d = ok(TW.call(c, "twilio_lookup_phone", { phone_number = S.ANA, fields = { "line_type_intelligence",
          "caller_name", "sim_swap", "identity_match", "reassigned_number" } }))
        assert.is_true(d.valid)
        local r2, reqs = requests_of(function()
          return TW.call(c, "twilio_lookup_phone", { phone_number = S.ANA, fields = {} })
        end)
        assert.is_nil(ok(r2).line_type_intelligence)
        assert.is_nil(reqs[1].params.Fields)
      end)
    end)

    it("answers valid: false with the reasons for an invalid number, not an error", function()
      with(function(c)
        local r = TW.call(c, "twilio_lookup_phone", { phone_number = "+1415555012" })
        local d = ok(r)
        assert.is_false(d.valid)
        assert.same({ "TOO_SHORT" }, d.validation_errors)
        assert.truthy(r.text:find("not a valid phone number (TOO_SHORT)", 1, true))
        r = TW.call(c, "twilio_lookup_phone", { phone_number = S.LANDLINE })
        assert.equal("landline", ok(r).line_type_intelligence.type)
        assert.truthy(r.text:find("cannot receive SMS", 1, true))
      end)
    end)

    it("checks the number and the fields", function()
      with(function(c)
        local before = sim.last()
        is_error(TW.call(c, "twilio_lookup_phone", {}), "`phone_number` is required")
        is_error(TW.call(c, "twilio_lookup_phone", { phone_number = "(415) 555-0123" }), "E.164")
        is_error(TW.call(c, "twilio_lookup_phone", { phone_number = S.ANA, fields = { "carrier" } }),
          "`fields[0]` must be one of")
        is_error(TW.call(c, "twilio_lookup_phone", { phone_number = S.ANA,
          fields = { "caller_name", "caller_name" } }), "must not repeat items")
        is_error(TW.call(c, "twilio_lookup_phone", { phone_number = S.ANA, fields = "caller_name" }),
          "`fields` must be an array")
        assert.equal(0, #sim.requests(before))
      end)
    end)
  end)

  describe("twilio_manage_calls", function()
    it("lists recent calls newest first with a default limit of 20, never placing one", function()
      local r, reqs = with(function(c)
        return requests_of(function() return TW.call(c, "twilio_manage_calls", { action = "list_recent" }) end)
      end)
      local d = ok(r)
      assert.equal(5, d.count)
      assert.equal("CA00000000000000000000000000000005", d.calls[1].sid)
      assert.equal("20", reqs[1].params.PageSize)
      assert.equal("GET", reqs[1].method)
      assert.equal(ACCT .. "/Calls.json", reqs[1].path)
    end)

    it("filters by number and exact start times", function()
      with(function(c)
        local r, reqs = requests_of(function()
          return TW.call(c, "twilio_manage_calls", { action = "list_recent", start_time_after = "2026-11-04",
            start_time_before = "2026-11-12T11:00:02Z" })
        end)
        local d = ok(r)
        local sids = {}
        for i, x in ipairs(d.calls) do sids[i] = x.sid end
        assert.same({ "CA00000000000000000000000000000003", "CA00000000000000000000000000000002" }, sids)
        assert.equal("2026-11-04T00:00:00Z", reqs[1].params["StartTime>"])
        assert.equal("2026-11-13T00:00:00Z", reqs[1].params["StartTime<"])
        d = ok(TW.call(c, "twilio_manage_calls", { action = "list_recent", from = S.ANA }))
        assert.equal(1, d.count)
        assert.equal("CA00000000000000000000000000000001", d.calls[1].sid)
        d = ok(TW.call(c, "twilio_manage_calls", { action = "list_recent", to = S.OTHER, limit = 1 }))
        assert.equal(1, d.count)
      end)
    end)

    it("gives a call's details and its recordings", function()
      with(function(c)
        local d = ok(TW.call(c, "twilio_manage_calls", { action = "get_details",
          call_sid = "CA00000000000000000000000000000003" }))
        assert.equal(120, d.duration)
        assert.equal("completed", d.status)
        assert.equal("outbound-api", d.direction)
        assert.equal("human", d.answered_by)
        assert.equal(0.014, d.price)
        assert.equal("2026-11-12T11:00:00Z", d.start_time)
        local r = TW.call(c, "twilio_manage_calls", { action = "get_recordings",
          call_sid = "CA00000000000000000000000000000001" })
        d = ok(r)
        assert.equal(2, d.count)
        local by = {}
        for _, x in ipairs(d.recordings) do by[x.sid] = x end
        local re1 = by.RE00000000000000000000000000000001
        assert.equal(240, re1.duration)
        assert.equal("completed", re1.status)
        assert.truthy(re1.media_url:find("/Recordings/RE00000000000000000000000000000001", 1, true))
        assert.truthy(re1.media_url:find(sim.url, 1, true) == 1)
        assert.truthy(r.text:find("252 seconds", 1, true))
        is_error(TW.call(c, "twilio_manage_calls", { action = "get_details", call_sid = "CA" .. ("9"):rep(32) }),
          "There is no call")
      end)
    end)

    it("checks each argument against the action", function()
      with(function(c)
        local cases = {
          { { action = "place_call" }, "`action` must be one of" },
          { { action = "get_details" }, "`call_sid` is required for action \"get_details\"" },
          { { action = "get_recordings" }, "`call_sid` is required for action \"get_recordings\"" },
          { { action = "get_details", call_sid = "CA12" }, "`call_sid` must be an identifier of CA followed by 32" },
          { { action = "list_recent", call_sid = "CA" .. ("0"):rep(32) }, "`call_sid` is not used with action" },
          { { action = "list_recent", limit = 101 }, "`limit` must be at most 100" },
          { { action = "list_recent", to = "12345" }, "`to` must be a valid phone number in E.164 format" },
          { { action = "list_recent", start_time_after = "2026-11-30", start_time_before = "2026-11-01" },
            "is later than" },
          { { action = "list_recent", start_time_before = "11/30/2026" }, "`start_time_before` must be an ISO 8601" },
        }
        refuses(c, "twilio_manage_calls", cases)
      end)
    end)
  end)

  describe("twilio_verify_phone", function()
    local function code_for(to)
      local _, body = sim.control("GET", "verify/codes")
      return body.codes[to]
    end

    it("sends a code by SMS (the default), a wrong code is approved: false, the right one approves", function()
      with(function(c)
        local r, reqs = requests_of(function()
          return TW.call(c, "twilio_verify_phone", { action = "send_code", to = S.ANA })
        end)
        local d = ok(r)
        assert.equal("pending", d.status)
        assert.equal("sms", d.channel)
        assert.truthy(d.sid:match("^VE%x+$"))
        assert.equal("/v2/Services/" .. S.VERIFY .. "/Verifications", reqs[1].path)
        assert.same({ To = S.ANA, Channel = "sms" }, reqs[1].form)
        assert.equal("sent", TW.audit_last(srv, "twilio_verify_phone").outcome)
        r = TW.call(c, "twilio_verify_phone", { action = "check_code", to = S.ANA, code = "000000" })
        d = ok(r)
        assert.is_false(d.approved)
        assert.equal("pending", d.status)
        assert.truthy(r.text:find("not correct", 1, true))
        local code = assert(code_for(S.ANA))
        r, reqs = requests_of(function()
          return TW.call(c, "twilio_verify_phone", { action = "check_code", to = S.ANA, code = code })
        end)
        d = ok(r)
        assert.is_true(d.approved)
        assert.same({ To = S.ANA, Code = code }, reqs[1].form)
        assert.equal("/v2/Services/" .. S.VERIFY .. "/VerificationCheck", reqs[1].path)
        -- the code is never stored in the audit trail
        local a = TW.audit_last(srv, "twilio_verify_phone")
        assert.falsy(json.encode(a):find(code, 1, true))
        -- used up: a new code is needed
        r = TW.call(c, "twilio_verify_phone", { action = "check_code", to = S.ANA, code = code })
        is_error(r, "expired", "send_code")
      end)
    end)

    it("sends by email only to an email address, and the other channels only to a number", function()
      with(function(c)
        local r, reqs = requests_of(function()
          return TW.call(c, "twilio_verify_phone", { action = "send_code", to = "ana@example.com", channel = "email" })
        end)
        assert.equal("email", ok(r).channel)
        assert.same({ To = "ana@example.com", Channel = "email" }, reqs[1].form)
        ok(TW.call(c, "twilio_verify_phone", { action = "send_code", to = S.ANA, channel = "call" }))
        ok(TW.call(c, "twilio_verify_phone", { action = "send_code", to = S.OTHER, channel = "whatsapp" }))
        local before = sim.last()
        is_error(TW.call(c, "twilio_verify_phone", { action = "send_code", to = S.ANA, channel = "email" }),
          "`channel` \"email\" needs `to` to be an email address")
        is_error(TW.call(c, "twilio_verify_phone", { action = "send_code", to = "ana@example.com" }),
          "`channel` \"sms\" needs `to` to be a phone number")
        is_error(TW.call(c, "twilio_verify_phone", { action = "send_code", to = "4155550123" }),
          "`to` must be a phone number in E.164 format, like +14155550123, or an email address")
        is_error(TW.call(c, "twilio_verify_phone", { action = "send_code", to = S.ANA, channel = "fax" }),
          "`channel` must be one of")
        is_error(TW.call(c, "twilio_verify_phone", { action = "check_code", to = S.ANA }),
          "`code` is required for action \"check_code\"")
        is_error(TW.call(c, "twilio_verify_phone", { action = "check_code", to = S.ANA, code = "12" }),
          "`code` must have at least 4 characters")
        is_error(TW.call(c, "twilio_verify_phone", { action = "send_code", to = S.ANA, code = "1234" }),
          "`code` is only used with action \"check_code\"")
        is_error(TW.call(c, "twilio_verify_phone", { action = "send_code" }), "`to` is required")
        assert.equal(0, #sim.requests(before))
      end)
    end)

    it("says the attempt limit was reached after too many wrong codes (60202)", function()
      with(function(c)
        ok(TW.call(c, "twilio_verify_phone", { action = "send_code", to = S.OTHER }))
        for _ = 1, 5 do
          assert.is_false(ok(TW.call(c, "twilio_verify_phone", { action = "check_code", to = S.OTHER,
            code = "000000" })).approved)
        end
        local r, reqs = requests_of(function()
          return TW.call(c, "twilio_verify_phone", { action = "check_code", to = S.OTHER, code = "000000" })
        end)
        is_error(r, "attempt limit", "(error 60202)", "send a new code")
        assert.equal(1, #reqs)
      end)
    end)

    it("explains an SMS code to a landline (60205)", function()
      with(function(c)
        is_error(TW.call(c, "twilio_verify_phone", { action = "send_code", to = S.LANDLINE }), "channel \"call\"")
      end)
    end)

    it("needs the tenant's Verify Service SID", function()
      local r, reqs = with(function(c)
        return requests_of(function() return TW.call(c, "twilio_verify_phone", { action = "send_code", to = S.ANA }) end)
      end, "bare")
      is_error(r, "Verify Service SID", "--verify-service-sid")
      assert.equal(0, #reqs)
      with(function(c)
        is_error(TW.call(c, "twilio_verify_phone", { action = "check_code", to = S.ANA, code = "123456" }),
          "Verify Service SID")
      end, "bare")
    end)

    it("gates send_code on autonomous sends but never check_code", function()
      with(function(c)
        is_error(TW.call(c, "twilio_verify_phone", { action = "send_code", to = S.ANA }), "autonomous sends")
        local r = TW.call(c, "twilio_verify_phone", { action = "check_code", to = S.ANA, code = "123456" })
        -- no verification is pending: Twilio answers 404, and nothing was held
        is_error(r, "send_code", "(error 20404)")
        assert.falsy(r.text:find("autonomous", 1, true))
      end, "gated")
    end)
  end)

  describe("twilio_account_overview", function()
    it("shows the account without its auth token", function()
      local r, reqs = with(function(c)
        return requests_of(function() return TW.call(c, "twilio_account_overview", { action = "account_info" }) end)
      end)
      local d = ok(r)
      assert.equal("Acme Clinic", d.name)
      assert.equal("active", d.status)
      assert.equal("Full", d.type)
      assert.equal(42.17, d.balance)
      assert.equal("USD", d.currency)
      assert.equal(S.ACCOUNT, d.sid)
      local all = json.encode(r)
      assert.falsy(all:find("auth_token", 1, true))
      assert.falsy(all:find("acmeauthtoken", 1, true))
      assert.equal(ACCT .. ".json", reqs[1].path)
    end)

    it("explains a Standard key that cannot read the account, while numbers still work", function()
      with(function(c)
        local r = TW.call(c, "twilio_account_overview", { action = "account_info" })
        is_error(r, "cannot read the account itself", "list_phone_numbers")
        local d = ok(TW.call(c, "twilio_account_overview", { action = "list_phone_numbers" }))
        assert.equal(2, d.count)
        for _, n in ipairs(d.numbers) do
          assert.is_false(n.capabilities.sms)
          assert.is_true(n.capabilities.voice)
        end
      end, "voice")
    end)

    it("lists the phone numbers with their capabilities and the default sender", function()
      with(function(c)
        local r = TW.call(c, "twilio_account_overview", { action = "list_phone_numbers" })
        local d = ok(r)
        assert.equal(3, d.count)
        local by = {}
        for _, n in ipairs(d.numbers) do by[n.phone_number] = n end
        assert.same({ voice = true, sms = true, mms = true }, by["+14155550100"].capabilities)
        assert.same({ voice = false, sms = true, mms = false }, by["+14155550101"].capabilities)
        assert.is_true(by["+14155550100"].is_default)
        assert.is_false(by["+14155550101"].is_default)
        assert.equal("Front desk", by["+14155550100"].friendly_name)
        assert.truthy(r.text:find("[default sender]", 1, true))
      end)
    end)

    it("summarises usage from the first of the month to today by default", function()
      with(function(c)
        local r, reqs = requests_of(function()
          return TW.call(c, "twilio_account_overview", { action = "usage_summary" })
        end)
        local d = ok(r)
        local first, today = os.date("!%Y-%m-01"), os.date("!%Y-%m-%d")
        assert.equal(first, d.start_date)
        assert.equal(today, d.end_date)
        assert.equal(first, reqs[1].params.StartDate)
        assert.equal(today, reqs[1].params.EndDate)
        assert.is_nil(reqs[1].params.Category)
        local cats = {}
        for _, x in ipairs(d.records) do cats[x.category] = x end
        assert.is_nil(cats.lookups, "only the tool's categories")
        r, reqs = requests_of(function()
          return TW.call(c, "twilio_account_overview", { action = "usage_summary", category = "sms-outbound",
            start_date = "2026-01-01", end_date = today })
        end)
        d = ok(r)
        assert.equal("sms-outbound", reqs[1].params.Category)
        assert.equal("2026-01-01", reqs[1].params.StartDate)
        assert.equal(1, #d.records)
        assert.equal("sms-outbound", d.records[1].category)
        assert.equal(365, d.records[1].count)
        assert.truthy(d.records[1].price > 2.99 and d.records[1].price < 3.0)
      end)
    end)

    it("checks dates, category and the arguments of each action", function()
      with(function(c)
        local cases = {
          { { action = "usage_summary", start_date = "2026-11-20", end_date = "2026-11-10" },
            "`start_date` (2026-11-20) is after `end_date` (2026-11-10)" },
          { { action = "usage_summary", start_date = "2999-01-01" }, "(today, the default)" },
          { { action = "usage_summary", start_date = "2026-1-1" }, "`start_date` must be a date as YYYY-MM-DD" },
          { { action = "usage_summary", end_date = "2026-02-30" }, "`end_date` must be a date as YYYY-MM-DD" },
          { { action = "usage_summary", category = "mms" }, "`category` must be one of" },
          { { action = "account_info", category = "sms" }, "`category` is not used with action \"account_info\"" },
          { { action = "list_phone_numbers", start_date = "2026-11-01" }, "`start_date` is not used" },
          { {}, "`action` is required" },
        }
        refuses(c, "twilio_account_overview", cases)
      end)
    end)
  end)
end)
