-- The Twilio simulator as a separate process (`switchboard sim`), driven
-- over HTTP with core.http and Basic credentials from core.vault, against
-- the default fixture (tests/fixtures/sim.lua).
local H = require("helpers")
local loop = require("core.loop")
local http = require("core.http")
local vault = require("core.vault")
local json = require("switchboard.json")

local ACME = "AC00000000000000000000000000000001"
local VOICE = "AC00000000000000000000000000000002"
local KEYS = {
  main = { "SK00000000000000000000000000000001", "acme-main-secret-000000000000001" },
  standard = { "SK00000000000000000000000000000002", "acme-standard-secret-00000000002" },
  revoked = { "SK00000000000000000000000000000003", "acme-revoked-secret-000000000003" },
  voice = { "SK00000000000000000000000000000010", "voice-standard-secret-0000000010" },
  dormant = { "SK00000000000000000000000000000020", "dormant-main-secret-000000000020" },
  token = { ACME, "acmeauthtoken0000000000000000001" },
}
local VA = "VA00000000000000000000000000000001"
local FROM = "+14155550100"
local TO = "+14155550123"

local sim = {}   -- pid, port, base, dir, stdout
local master, wk

-- A vault credential for user:secret (the secret stays in C memory).
local function cred(user, secret)
  local blob = master:seal(wk, "sim", "secret", secret)
  return assert(master:credential(wk, "sim", "secret", blob, user))
end

local creds = {}
local function auth(name)
  creds[name] = creds[name] or cred(KEYS[name][1], KEYS[name][2])
  return creds[name]
end

local function req(opts)
  opts.url = opts.url or (sim.base .. opts.path)
  if opts.auth == nil then opts.auth = auth("main") end
  if opts.auth == false then opts.auth = nil end
  local res, err = http.request(opts)
  assert(res, err)
  res.json = json.decode(res.body)
  return res
end

local function api(path) return "/2010-04-01/Accounts/" .. ACME .. path end

local function control(method, path, body)
  local res = assert(http.request({ method = method, url = sim.base .. "/__sim/" .. path, body = body,
    headers = body and { ["Content-Type"] = "application/json" } or nil }))
  return res.status, json.decode(res.body)
end

local function send(form, key)
  return req({ method = "POST", path = "/2010-04-01/Accounts/" .. ACME .. "/Messages.json", form = form,
               auth = key and auth(key) })
end

-- Running (a zombie left for a missing init to reap counts as gone).
local function alive(pid)
  local out, code = H.sh("kill -0 " .. pid .. " 2>/dev/null && ps -o stat= -p " .. pid)
  return code == 0 and not out:match("^%s*Z")
end

-- Start `switchboard sim`; until the runtime dispatches the command, run
-- the same entry (integrations.twilio.sim.cli) through `switchboard exec`.
local function start_sim()
  local dir = H.tmpdir("sim")
  local pf, out = dir .. "/port", dir .. "/stdout"
  local function launch(cmd)
    return (H.sh(("%s >%s 2>%s/stderr & echo $!"):format(cmd, H.q(out), H.q(dir))):gsub("%s+", ""))
  end
  local pid = launch(("%s sim --port 0 --port-file %s"):format(H.q(H.BIN), H.q(pf)))
  local deadline = os.time() + 10
  while not H.exists(pf) do
    if not alive(pid) then
      H.write(dir .. "/launch.lua",
        "return require('integrations.twilio.sim.cli').commands.sim(arg)\n")
      pid = launch(("%s exec %s --port 0 --port-file %s"):format(H.q(H.BIN), H.q(dir .. "/launch.lua"), H.q(pf)))
      break
    end
    if os.time() > deadline then break end
    os.execute("sleep 0.02")
  end
  H.wait_for(function()
    if H.exists(pf) then return true end
    if not alive(pid) then error("the simulator exited: " .. (H.read(dir .. "/stderr") or ""), 0) end
  end, 10, "the simulator's port file")
  local port = tonumber(H.read(pf))
  return { pid = pid, port = port, base = "http://127.0.0.1:" .. port, dir = dir, stdout = out }
end

describe("Twilio simulator", function()
  setup(function()
    sim = start_sim()
    local dir = H.tmpdir("simkey")
    assert(vault.create_master(dir .. "/master.key"))
    master = assert(vault.load_master(dir .. "/master.key"))
    wk = master:new_data_key("sim")
  end)

  teardown(function()
    for _, c in pairs(creds) do c:close() end
    if sim.pid and alive(sim.pid) then
      os.execute("kill -TERM " .. sim.pid)
      H.wait_for(function() return not alive(sim.pid) end, 10, "the simulator to stop")
    end
    os.execute("rm -rf " .. H.q(sim.dir))
  end)

  before_each(function()
    H.async(function()
      local status = control("POST", "reset")
      assert.equal(200, status)
    end)
  end)

  it("announces its URL and writes the port file", function()
    assert.equal("switchboard sim listening on http://127.0.0.1:" .. sim.port .. "\n", H.read(sim.stdout))
  end)

  describe("auth", function()
    it("accepts a main key and the auth token; the account carries auth_token", function()
      H.async(function()
        local r = req({ path = api(".json") })
        assert.equal(200, r.status)
        assert.equal(ACME, r.json.sid)
        assert.equal("Acme Clinic", r.json.friendly_name)
        assert.equal("active", r.json.status)
        assert.equal("Full", r.json.type)
        assert.equal("acmeauthtoken0000000000000000001", r.json.auth_token)
        assert.matches("^%a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d %+0000$", r.json.date_created)
        r = req({ path = api("/Balance.json"), auth = auth("token") })
        assert.equal(200, r.status)
        assert.equal("42.17", r.json.balance)
      end)
    end)

    it("refuses a wrong secret, no credentials and a revoked key with 401/20003", function()
      H.async(function()
        local bad = cred(KEYS.main[1], "wrong")
        local r = req({ path = api("/Messages.json"), auth = bad })
        bad:close()
        assert.equal(401, r.status)
        assert.same({ code = 20003, message = "Authenticate", more_info = "https://www.twilio.com/docs/errors/20003",
                      status = 401 }, r.json)
        assert.matches("Basic", r.headers["www-authenticate"])
        r = req({ path = api("/Messages.json"), auth = false })
        assert.equal(401, r.status)
        r = req({ path = api("/Messages.json"), auth = auth("revoked") })
        assert.equal(401, r.status)
        assert.equal(20003, r.json.code)
        r = req({ path = api("/Messages.json"), auth = auth("dormant") })   -- suspended account
        assert.equal(401, r.status)
      end)
    end)

    it("revokes a key through the control API", function()
      H.async(function()
        assert.equal(200, req({ path = api("/Balance.json") }).status)
        local status, body = control("POST", "keys/" .. KEYS.main[1] .. "/revoke")
        assert.equal(200, status)
        assert.is_true(body.revoked)
        local r = req({ path = api("/Balance.json") })
        assert.equal(401, r.status)
        assert.equal(20003, r.json.code)
        assert.equal(404, (control("POST", "keys/SK00000000000000000000000000000099/revoke")))
      end)
    end)

    it("a standard key gets 401/20003 on /Accounts/{AC}.json but works elsewhere", function()
      H.async(function()
        local r = req({ path = api(".json"), auth = auth("standard") })
        assert.equal(401, r.status)
        assert.equal(20003, r.json.code)
        r = req({ path = api("/Messages.json"), auth = auth("standard") })
        assert.equal(200, r.status)
        r = req({ path = "/v2/PhoneNumbers/%2B14155550123", auth = auth("standard") })
        assert.equal(200, r.status)
      end)
    end)

    it("the AccountSid in the path must be the key's account", function()
      H.async(function()
        local r = req({ path = "/2010-04-01/Accounts/" .. VOICE .. "/Messages.json" })
        assert.equal(401, r.status)
        assert.equal(20003, r.json.code)
        r = req({ path = "/2010-04-01/Accounts/" .. KEYS.main[1] .. "/Messages.json" })
        assert.equal(400, r.status)
        assert.equal(21470, r.json.code)
      end)
    end)
  end)

  describe("messages", function()
    it("creates a message: 201, queued, v2010 shape, then delivered", function()
      H.async(function()
        local r = send({ To = TO, From = FROM, Body = "Hello from the clinic" })
        assert.equal(201, r.status)
        local m = r.json
        assert.matches("^SM%x+$", m.sid)
        assert.equal(34, #m.sid)
        assert.equal("queued", m.status)
        assert.equal(TO, m.to)
        assert.equal(FROM, m.from)
        assert.equal("1", m.num_segments)
        assert.equal("0", m.num_media)
        assert.equal(json.null, m.price)
        assert.equal(json.null, m.error_code)
        assert.equal(json.null, m.date_sent)
        assert.equal("outbound-api", m.direction)
        assert.equal("2010-04-01", m.api_version)
        assert.matches("^%a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d %+0000$", m.date_created)
        assert.equal(api("/Messages/" .. m.sid .. ".json"), m.uri)
        assert.equal(api("/Messages/" .. m.sid .. "/Media.json"), m.subresource_uris.media)
        control("POST", "clock", json.encode({ advance = 5 }))
        local f = req({ path = m.uri })
        assert.equal(200, f.status)
        assert.equal("delivered", f.json.status)
        assert.equal("-0.00790", f.json.price)
        assert.is_string(f.json.date_sent)
        local _, all = control("GET", "messages")
        assert.equal(1, #all.messages)
        assert.equal(m.sid, all.messages[1].sid)
      end)
    end)

    it("counts GSM-7 and UCS-2 segments", function()
      H.async(function()
        assert.equal("1", send({ To = TO, From = FROM, Body = string.rep("a", 160) }).json.num_segments)
        assert.equal("2", send({ To = TO, From = FROM, Body = string.rep("a", 161) }).json.num_segments)
        assert.equal("2", send({ To = TO, From = FROM, Body = string.rep("€", 81) }).json.num_segments)
        assert.equal("1", send({ To = TO, From = FROM, Body = string.rep("é", 70) .. "" }).json.num_segments)
        assert.equal("2", send({ To = TO, From = FROM, Body = string.rep("ж", 71) }).json.num_segments)
        assert.equal("3", send({ To = TO, From = FROM, Body = string.rep("ж", 135) }).json.num_segments)
      end)
    end)

    it("refuses bad sends with Twilio's codes", function()
      H.async(function()
        local function code(form, key)
          local r = send(form, key)
          assert.equal(400, r.status, r.body)
          assert.equal(400, r.json.status)
          assert.equal(("https://www.twilio.com/docs/errors/%d"):format(r.json.code), r.json.more_info)
          return r.json.code
        end
        assert.equal(21211, code({ To = "+1415", From = FROM, Body = "x" }))
        assert.equal(21211, code({ To = "0044 20", From = FROM, Body = "x" }))
        assert.equal(21606, code({ To = TO, From = "+14155550999", Body = "x" }))
        assert.equal(21610, code({ To = "+14155550199", From = FROM, Body = "x" }))
        assert.equal(21617, code({ To = TO, From = FROM, Body = string.rep("a", 1601) }))
        assert.equal(21602, code({ To = TO, From = FROM }))
        assert.equal(21604, code({ From = FROM, Body = "x" }))
        assert.equal(21603, code({ To = TO, Body = "x" }))
        assert.equal(21655, code({ To = "whatsapp:" .. TO, From = "whatsapp:+14155238886",
                                   ContentSid = "HX0000000000000000000000000000dead" }))
        assert.equal(63007, code({ To = "whatsapp:" .. TO, From = "whatsapp:+14155550100", Body = "x" }))
        -- the voice-only account's numbers have no SMS capability
        local r = req({ method = "POST", path = "/2010-04-01/Accounts/" .. VOICE .. "/Messages.json",
                        auth = auth("voice"), form = { To = TO, From = "+14155550110", Body = "x" } })
        assert.equal(400, r.status)
        assert.equal(21606, r.json.code)
        local _, all = control("GET", "messages")
        assert.equal(0, #all.messages)
      end)
    end)

    it("sends media (repeated MediaUrl) and lists it", function()
      H.async(function()
        local r = send({ To = TO, From = FROM, Body = "pics",
                         MediaUrl = { "https://example.com/a.png", "https://example.com/b.jpg" } })
        assert.equal(201, r.status)
        assert.matches("^MM", r.json.sid)
        assert.equal("2", r.json.num_media)
        local l = req({ path = r.json.subresource_uris.media })
        assert.equal(200, l.status)
        assert.equal(2, #l.json.media_list)
        assert.equal("image/png", l.json.media_list[1].content_type)
        assert.equal(r.json.sid, l.json.media_list[1].parent_sid)
        assert.matches("^ME", l.json.media_list[1].sid)
        local bytes = req({ path = l.json.media_list[1].uri:gsub("%.json$", "") })
        assert.equal(200, bytes.status)
        assert.equal("image/png", bytes.headers["content-type"])
        -- fixture media
        l = req({ path = api("/Messages/MM00000000000000000000000000000003/Media.json") })
        assert.equal(2, #l.json.media_list)
      end)
    end)

    it("WhatsApp: a template always works; free-form outside the 24 h window ends failed with 63016", function()
      H.async(function()
        local wa = "whatsapp:+14155238886"
        local free_in = send({ To = "whatsapp:" .. TO, From = wa, Body = "inside the window" }).json
        local free_out = send({ To = "whatsapp:+14155550124", From = wa, Body = "outside the window" }).json
        local tpl = send({ To = "whatsapp:+14155550124", From = wa, ContentSid = "HX00000000000000000000000000000001",
                           ContentVariables = json.encode({ ["1"] = "Ana", ["2"] = "3pm" }) })
        assert.equal(201, tpl.status)
        assert.equal("Hi Ana, your appointment is at 3pm.", tpl.json.body)
        assert.equal("queued", free_out.status)
        control("POST", "clock", json.encode({ advance = 5 }))
        local function fetch(m) return req({ path = m.uri }).json end
        assert.equal("delivered", fetch(free_in).status)
        local out = fetch(free_out)
        assert.equal("failed", out.status)
        assert.equal(63016, out.error_code)
        assert.equal("delivered", fetch(tpl.json).status)
        local bad = send({ To = "whatsapp:" .. TO, From = wa, ContentSid = "HX00000000000000000000000000000001",
                           ContentVariables = "not json" })
        assert.equal(400, bad.status)
        assert.equal(21656, bad.json.code)
      end)
    end)

    it("fetches one message; an unknown SID is 404/20404", function()
      H.async(function()
        local r = req({ path = api("/Messages/SM00000000000000000000000000000001.json") })
        assert.equal(200, r.status)
        assert.equal("delivered", r.json.status)
        assert.equal("Mon, 02 Nov 2026 09:15:02 +0000", r.json.date_sent)
        r = req({ path = api("/Messages/SM0000000000000000000000000000beef.json") })
        assert.equal(404, r.status)
        assert.equal(20404, r.json.code)
      end)
    end)

    it("lists newest first with To/From/DateSent filters", function()
      H.async(function()
        local r = req({ path = api("/Messages.json") })
        assert.equal(200, r.status)
        assert.equal(7, #r.json.messages)
        assert.equal("SM00000000000000000000000000000007", r.json.messages[1].sid)
        assert.equal("SM00000000000000000000000000000001", r.json.messages[7].sid)
        assert.equal(json.null, r.json.next_page_uri)
        assert.equal(0, r.json.page)
        assert.equal(50, r.json.page_size)
        local function sids(query)
          local res = req({ path = api("/Messages.json"), query = query })
          assert.equal(200, res.status, res.body)
          local out = {}
          for _, m in ipairs(res.json.messages) do out[#out + 1] = m.sid:sub(-1) end
          return table.concat(out)
        end
        assert.equal("31", sids({ To = TO }))
        assert.equal("731", sids({ From = FROM }))
        assert.equal("5", sids({ To = "whatsapp:" .. TO, ["DateSent>"] = "2026-11-01" }))
        assert.equal("65", sids({ ["DateSent>"] = "2026-11-10", ["DateSent<"] = "2026-11-10" }))
        assert.equal("4321", sids({ ["DateSent<"] = "2026-11-05" }))
        assert.equal("765", sids({ ["DateSent>"] = "2026-11-06" }))
        assert.equal("21", sids({ DateSent = "2026-11-02" }))
        assert.equal("1", sids({ ["DateSent<"] = "2026-11-02T09:16:00Z" }))
        local bad = req({ path = api("/Messages.json"), query = { ["DateSent>"] = "yesterday" } })
        assert.equal(400, bad.status)
      end)
    end)

    it("pages like Twilio: next_page_uri holds Page and PageToken and is followed as given", function()
      H.async(function()
        local seen, pages = {}, 0
        local r = req({ path = api("/Messages.json"), query = { PageSize = 3, From = FROM } })
        assert.equal(api("/Messages.json") .. "?From=%2B14155550100&PageSize=3&Page=0", r.json.first_page_uri)
        while true do
          pages = pages + 1
          assert.equal(3, r.json.page_size)
          assert.equal(pages - 1, r.json.page)
          for _, m in ipairs(r.json.messages) do seen[#seen + 1] = m.sid:sub(-1) end
          if r.json.next_page_uri == json.null then break end
          assert.matches("From=%%2B14155550100", r.json.next_page_uri)
          assert.matches("Page=" .. pages .. "&PageToken=PA[SM][MS]%x+$", r.json.next_page_uri)
          r = req({ path = r.json.next_page_uri })
        end
        assert.equal(1, pages)
        assert.equal("731", table.concat(seen))
        -- all seven, two per page
        seen, pages = {}, 0
        r = req({ path = api("/Messages.json"), query = { PageSize = 2 } })
        while true do
          pages = pages + 1
          for _, m in ipairs(r.json.messages) do seen[#seen + 1] = m.sid:sub(-1) end
          if r.json.next_page_uri == json.null then break end
          local nxt = r.json.next_page_uri
          r = req({ path = nxt })
          assert.is_string(r.json.previous_page_uri)
        end
        assert.equal(4, pages)
        assert.equal("7654321", table.concat(seen))
        -- a message created meanwhile does not shift the cursor
        r = req({ path = api("/Messages.json"), query = { PageSize = 2 } })
        send({ To = TO, From = FROM, Body = "new" })
        r = req({ path = r.json.next_page_uri })
        assert.equal("SM00000000000000000000000000000005", r.json.messages[1].sid)
      end)
    end)
  end)

  describe("paging parameters", function()
    it("refuses a PageSize that is not a whole number from 1 to 1000, as Twilio does (400, 20001)", function()
      H.async(function()
        local lists = { api("/Messages.json"), api("/Calls.json"), api("/IncomingPhoneNumbers.json"),
                        api("/Usage/Records.json"), "/v1/Content" }
        for _, path in ipairs(lists) do
          for _, bad in ipairs({ "5.0", "abc", "0", "1001", "", "-1", "5 ", "1e2" }) do
            local r = req({ path = path .. "?PageSize=" .. bad:gsub(" ", "%%20") })
            assert.equal(400, r.status, path .. " PageSize=" .. bad)
            assert.equal(20001, r.json.code, path .. " PageSize=" .. bad)
            assert.equal(400, r.json.status)
            assert.truthy(r.json.message:find("PageSize", 1, true), r.json.message)
          end
          for _, good in ipairs({ "1", "5", "1000" }) do
            local r = req({ path = path, query = { PageSize = good } })
            assert.equal(200, r.status, path .. " PageSize=" .. good)
          end
          local r = req({ path = path, query = { PageSize = 2, Page = "1.0" } })
          assert.equal(400, r.status, path .. " Page=1.0")
          assert.equal(20001, r.json.code)
        end
      end)
    end)
  end)

  describe("calls, numbers, usage, content", function()
    it("lists calls with StartTime filters and paging, fetches one and its recordings", function()
      H.async(function()
        local r = req({ path = api("/Calls.json") })
        assert.equal(5, #r.json.calls)
        assert.equal("CA00000000000000000000000000000005", r.json.calls[1].sid)
        r = req({ path = api("/Calls.json"), query = { ["StartTime>"] = "2026-11-04", ["StartTime<"] = "2026-11-12",
                                                       PageSize = 2 } })
        assert.equal(2, #r.json.calls)
        assert.is_string(r.json.next_page_uri)
        r = req({ path = r.json.next_page_uri })
        assert.equal(1, #r.json.calls)
        assert.equal("CA00000000000000000000000000000002", r.json.calls[1].sid)
        r = req({ path = api("/Calls/CA00000000000000000000000000000001.json") })
        assert.equal("completed", r.json.status)
        assert.equal("252", r.json.duration)
        assert.equal("inbound", r.json.direction)
        assert.equal("(415) 555-0123", r.json.from_formatted)
        r = req({ path = r.json.subresource_uris.recordings })
        assert.equal(2, #r.json.recordings)
        assert.matches("^RE", r.json.recordings[1].sid)
        local media = req({ path = api("/Recordings/" .. r.json.recordings[1].sid .. ".mp3") })
        assert.equal("audio/mpeg", media.headers["content-type"])
        assert.equal(404, req({ path = api("/Calls/CA0000000000000000000000000000beef.json") }).status)
      end)
    end)

    it("lists incoming numbers with capabilities and paging", function()
      H.async(function()
        local r = req({ path = api("/IncomingPhoneNumbers.json"), query = { PageSize = 2 } })
        assert.equal(2, #r.json.incoming_phone_numbers)
        assert.is_true(r.json.incoming_phone_numbers[1].capabilities.sms)
        r = req({ path = r.json.next_page_uri })
        assert.equal(1, #r.json.incoming_phone_numbers)
        r = req({ path = "/2010-04-01/Accounts/" .. VOICE .. "/IncomingPhoneNumbers.json", auth = auth("voice") })
        for _, n in ipairs(r.json.incoming_phone_numbers) do assert.is_false(n.capabilities.sms) end
      end)
    end)

    it("answers usage records by category and window", function()
      H.async(function()
        local r = req({ path = api("/Usage/Records.json"), query = { Category = "sms-outbound" } })
        assert.equal(1, #r.json.usage_records)
        local u = r.json.usage_records[1]
        assert.equal("sms-outbound", u.category)
        assert.equal("365", u.count)
        assert.equal("2.99410", u.price)
        r = req({ path = api("/Usage/Records/Today.json") })
        assert.equal(0, #r.json.usage_records)
        r = req({ path = api("/Usage/Records.json"), query = { StartDate = "-7days" } })
        local total
        for _, x in ipairs(r.json.usage_records) do if x.category == "totalprice" then total = x end end
        assert.equal("4.51240", total.price)
      end)
    end)

    it("fetches a Content template and its approval", function()
      H.async(function()
        local r = req({ path = "/v1/Content/HX00000000000000000000000000000001" })
        assert.equal(200, r.status)
        assert.equal("appointment_reminder", r.json.friendly_name)
        assert.equal("Hi {{1}}, your appointment is at {{2}}.", r.json.types["twilio/text"].body)
        r = req({ path = "/v1/Content/HX00000000000000000000000000000002/ApprovalRequests" })
        assert.equal("rejected", r.json.whatsapp.status)
        assert.equal(404, req({ path = "/v1/Content/HX0000000000000000000000000000beef" }).status)
      end)
    end)
  end)

  describe("lookups", function()
    it("answers a valid number with the requested packages only", function()
      H.async(function()
        local r = req({ path = "/v2/PhoneNumbers/%2B14155550123", query = { Fields = "line_type_intelligence,caller_name" } })
        assert.equal(200, r.status)
        assert.is_true(r.json.valid)
        assert.equal("US", r.json.country_code)
        assert.equal("(415) 555-0123", r.json.national_format)
        assert.equal("mobile", r.json.line_type_intelligence.type)
        assert.equal(json.null, r.json.line_type_intelligence.error_code)
        assert.equal("ANA LOPEZ", r.json.caller_name.caller_name)
        assert.equal(json.null, r.json.sim_swap)
        -- national input with CountryCode
        r = req({ path = "/v2/PhoneNumbers/4155550124", query = { CountryCode = "US", Fields = "line_type_intelligence" } })
        assert.equal("+14155550124", r.json.phone_number)
        assert.equal("landline", r.json.line_type_intelligence.type)
      end)
    end)

    it("answers an invalid number with 200, valid = false and validation_errors", function()
      H.async(function()
        local r = req({ path = "/v2/PhoneNumbers/%2B141555501234567" })
        assert.equal(200, r.status)
        assert.is_false(r.json.valid)
        assert.same({ "TOO_LONG" }, r.json.validation_errors)
        assert.equal(json.null, r.json.national_format)
        r = req({ path = "/v2/PhoneNumbers/%2B1415555012", query = { Fields = "line_type_intelligence" } })
        assert.is_false(r.json.valid)
        assert.same({ "TOO_SHORT" }, r.json.validation_errors)
        assert.equal(json.null, r.json.line_type_intelligence)
      end)
    end)

    it("reports a package error per package (60606) without failing the call", function()
      H.async(function()
        local r = req({ path = "/v2/PhoneNumbers/%2B14155550188", query = { Fields = "sim_swap,line_type_intelligence" } })
        assert.equal(200, r.status)
        assert.equal(60606, r.json.sim_swap.error_code)
        assert.equal(json.null, r.json.sim_swap.last_sim_swap)
        assert.equal("mobile", r.json.line_type_intelligence.type)
        r = req({ path = "/v2/PhoneNumbers/%2B14155550188", query = { Fields = "nonsense" } })
        assert.equal(400, r.status)
      end)
    end)
  end)

  describe("verify", function()
    local function start(to, channel)
      return req({ method = "POST", path = "/v2/Services/" .. VA .. "/Verifications",
                   form = { To = to, Channel = channel or "sms" } })
    end
    local function check(form)
      return req({ method = "POST", path = "/v2/Services/" .. VA .. "/VerificationCheck", form = form })
    end
    local function code_for(to)
      local _, body = control("GET", "verify/codes")
      return body.codes[to]
    end

    it("sends a code, a wrong code stays pending, the right one approves and deletes", function()
      H.async(function()
        local r = start(TO)
        assert.equal(201, r.status)
        assert.matches("^VE%x+$", r.json.sid)
        assert.equal("pending", r.json.status)
        assert.equal("sms", r.json.channel)
        assert.equal(1, #r.json.send_code_attempts)
        assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", r.json.date_created)
        local code = code_for(TO)
        assert.matches("^%d%d%d%d%d%d$", code)
        local wrong = code == "000000" and "111111" or "000000"
        local c = check({ To = TO, Code = wrong })
        assert.equal(200, c.status)
        assert.equal("pending", c.json.status)
        assert.is_false(c.json.valid)
        -- a resend within the validity reuses the code
        local again = start(TO)
        assert.equal(r.json.sid, again.json.sid)
        assert.equal(2, #again.json.send_code_attempts)
        assert.equal(code, code_for(TO))
        c = check({ VerificationSid = r.json.sid, Code = code })
        assert.equal("approved", c.json.status)
        assert.is_true(c.json.valid)
        c = check({ To = TO, Code = code })
        assert.equal(404, c.status)
        assert.equal(20404, c.json.code)
      end)
    end)

    it("allows 5 sends per destination in 10 minutes, then 429/60203", function()
      H.async(function()
        for _ = 1, 5 do assert.equal(201, start(TO).status) end
        local r = start(TO)
        assert.equal(429, r.status)
        assert.equal(60203, r.json.code)
        assert.equal(201, start("+14155550125").status)   -- another destination
        control("POST", "clock", json.encode({ advance = 601 }))
        assert.equal(201, start(TO).status)
      end)
    end)

    it("after 5 wrong checks the next is 429/60202 and the verification is gone", function()
      H.async(function()
        start(TO)
        local code = code_for(TO)
        local wrong = code == "000000" and "111111" or "000000"
        for _ = 1, 5 do assert.equal("pending", check({ To = TO, Code = wrong }).json.status) end
        local r = check({ To = TO, Code = code })
        assert.equal(429, r.status)
        assert.equal(60202, r.json.code)
        assert.equal(404, check({ To = TO, Code = code }).status)
      end)
    end)

    it("an expired code is 404/20404; email and bad input", function()
      H.async(function()
        start(TO)
        local code = code_for(TO)
        control("POST", "clock", json.encode({ advance = 601 }))
        local r = check({ To = TO, Code = code })
        assert.equal(404, r.status)
        assert.equal(20404, r.json.code)
        r = start("ana@example.com", "email")
        assert.equal(201, r.status)
        assert.matches("^%d+$", code_for("ana@example.com"))
        r = start("not-a-number")
        assert.equal(400, r.status)
        assert.equal(60200, r.json.code)
        r = start(TO, "pigeon")
        assert.equal(60200, r.json.code)
        r = start("+14155550124")                    -- a landline
        assert.equal(60205, r.json.code)
        r = req({ method = "POST", path = "/v2/Services/VA0000000000000000000000000000beef/Verifications",
                  form = { To = TO, Channel = "sms" } })
        assert.equal(404, r.status)
      end)
    end)
  end)

  describe("faults and the request log", function()
    it("429 x3 then success, with Retry-After and code 20429", function()
      H.async(function()
        local status = control("POST", "faults", json.encode({
          { match = { method = "POST", path_pattern = "/Messages%.json$" }, action = "429", code = 20429,
            retry_after = 1, count = 3 },
        }))
        assert.equal(200, status)
        for _ = 1, 3 do
          local r = send({ To = TO, From = FROM, Body = "retry me" })
          assert.equal(429, r.status)
          assert.equal(20429, r.json.code)
          assert.equal("1", r.headers["retry-after"])
        end
        local r = send({ To = TO, From = FROM, Body = "retry me" })
        assert.equal(201, r.status)
        local _, all = control("GET", "messages")
        assert.equal(1, #all.messages)
        local _, log = control("GET", "requests")
        local n429 = 0
        for _, e in ipairs(log.requests) do
          if e.fault == "429" then n429 = n429 + 1 end
        end
        assert.equal(3, n429)
        local last = log.requests[#log.requests]
        assert.equal("POST", last.method)
        assert.equal(201, last.status)
        assert.equal("retry me", last.form.Body)
        assert.equal(KEYS.main[1], last.auth)
      end)
    end)

    it("drop, delay, 500 after processing, and matching by method and path", function()
      H.async(function()
        -- libcurl silently repeats a GET (up to 5 times) when a reused
        -- connection closes without an answer: drop more often than that
        control("POST", "faults", json.encode({
          { match = { path_pattern = "^/v2/PhoneNumbers/" }, action = "drop", count = 8 },
          { match = { method = "GET", path_pattern = "/Balance%.json$" }, action = "delay", delay_ms = 300 },
          { match = { method = "POST" }, action = "500", process = true },
        }))
        req({ path = api("/Balance.json") })        -- consumes the delay
        local res, err, info = http.request({ url = sim.base .. "/v2/PhoneNumbers/%2B14155550123", auth = auth("main") })
        assert.is_nil(res)
        assert.is_string(err)
        assert.is_true(info.sent)
        control("DELETE", "faults")
        control("POST", "faults", json.encode({
          { match = { method = "GET", path_pattern = "/Balance%.json$" }, action = "delay", delay_ms = 300 },
          { match = { method = "POST" }, action = "500", process = true },
        }))
        local t0 = loop.time()
        assert.equal(200, req({ path = api("/Balance.json") }).status)
        assert.is_true(loop.time() - t0 >= 0.28)
        local r = send({ To = TO, From = FROM, Body = "outcome unknown" })
        assert.equal(500, r.status)
        -- processed before failing: the message exists, reconcilable by listing
        local l = req({ path = api("/Messages.json"), query = { To = TO, ["DateSent>"] = os.date("!%Y-%m-%d") } })
        assert.equal("outcome unknown", l.json.messages[1].body)
        local _, f = control("GET", "faults")
        assert.equal(0, #f.faults)
        assert.equal(400, (control("POST", "faults", '[{"action":"explode"}]')))
      end)
    end)

    it("returns the request log since N, and reset clears it", function()
      H.async(function()
        req({ path = api("/Balance.json") })
        req({ path = api("/Messages.json"), query = { To = TO } })
        local _, log = control("GET", "requests")
        assert.equal(2, #log.requests)
        assert.equal(2, log.last)
        assert.equal(TO, log.requests[2].params.To)
        assert.equal("To=%2B14155550123", log.requests[2].query)
        local _, since = control("GET", "requests?since=1")
        assert.equal(1, #since.requests)
        assert.equal(2, since.requests[1].n)
        control("POST", "reset")
        _, log = control("GET", "requests")
        assert.equal(0, #log.requests)
      end)
    end)
  end)

  it("stops on SIGTERM", function()
    local s = start_sim()
    os.execute("kill -TERM " .. s.pid)
    H.wait_for(function() return not alive(s.pid) end, 10, "the simulator to stop")
    os.execute("rm -rf " .. H.q(s.dir))
  end)
end)
