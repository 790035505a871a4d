-- Conformance with Twilio's OpenAPI specs: Prism (@stoplight/prism-cli 5,
-- installed by `make deps` into tests/node) mocks api v2010, Lookups v2,
-- Verify v2 and Content v1 from ../shared/twilio-oai/, one process per
-- spec, on loopback. A tenant is connected to them; every tool action is
-- driven through the agent socket; Prism must report no request violation
-- (no 422 or 401) for any of them. Prism's example answers lack fields
-- and hold nulls, so this also shows the tools cope with that.
local H = require("helpers")
local TW = require("twilio_env")

local PRISM = H.ROOT .. "/tests/node/node_modules/.bin/prism"
local SPECS = H.ROOT .. "/../shared/twilio-oai"
local FILES = { api = "twilio_api_v2010.json", lookups = "twilio_lookups_v2.json",
                verify = "twilio_verify_v2.json", content = "twilio_content_v1.json" }
local PRODUCTS = { "api", "lookups", "verify", "content" }

local available = H.exists(PRISM) and H.exists(SPECS .. "/" .. FILES.api)

describe("conformance with Twilio's OpenAPI specs (Prism)", function()
  if not available then
    it("needs Prism (make deps) and ../shared/twilio-oai", function()
      pending("Prism or the Twilio specs are not installed")
    end)
    return
  end

  local dir, prisms, srv, token = nil, {}, nil, nil

  local function start_prism(product, port)
    local log = ("%s/prism-%s.log"):format(dir, product)
    local pid = H.sh(("cd %s && exec %s mock -h 127.0.0.1 -p %d %s >%s 2>&1 & echo $!"):format(
      H.q(dir), H.q(PRISM), port, H.q(SPECS .. "/" .. FILES[product]), H.q(log))):gsub("%s+", "")
    prisms[product] = { pid = pid, port = port, log = log, url = "http://127.0.0.1:" .. port }
  end

  local function prism_log(product) return H.read(prisms[product].log) or "" end

  setup(function()
    dir = H.tmpdir("prism")
    local ports = TW.free_ports(#PRODUCTS)
    for i, p in ipairs(PRODUCTS) do start_prism(p, ports[i]) end
    for _, p in ipairs(PRODUCTS) do
      H.wait_for(function()
        local log = prism_log(p)
        if log:find("Prism is listening", 1, true) then return true end
        local _, code = H.sh("kill -0 " .. prisms[p].pid .. " 2>/dev/null")
        if code ~= 0 then error("prism for " .. p .. " exited: " .. log:sub(-2000), 0) end
        return false
      end, 120, "Prism (" .. p .. ") to listen")
    end
    -- one session reads and then sends, as a conformance run does: the
    -- untrusted-content guard flags those sends instead of holding them
    srv = TW.server({ config = { policy_settings = {
      untrusted_content = { action = "flag", mention_action = "flag" } } } })
    local hosts = {}
    for _, p in ipairs(PRODUCTS) do hosts[#hosts + 1] = p .. "=" .. prisms[p].url end
    token = TW.connect(srv, "conform", table.concat(hosts, ","),
      ("--whatsapp-number %s --verify-service-sid %s"):format(TW.WHATSAPP, TW.VERIFY))
    -- Prism's example number is not SMS-capable, so connect chose no
    -- default number; give the tenant that number to send from.
    TW.sql(srv, "UPDATE connections SET settings = json_set(settings, '$.default_number', '+18089255327')")
  end)

  teardown(function()
    if srv then srv.stop() end
    for _, p in pairs(prisms) do os.execute("kill " .. p.pid .. " 2>/dev/null") end
  end)

  -- Every action of every tool, as an agent would call them. Not media_url:
  -- Twilio takes MediaUrl as repeated form keys (MediaUrl=a&MediaUrl=b, as
  -- its SDKs send it), which Prism 5 cannot read into an array without an
  -- encoding object in the spec (stoplightio/prism#2473); the simulator
  -- specs cover it. Calls are listed at most 2 at a time, one page of
  -- Prism's example: that example's own next_page_uri carries
  -- StartTime=2008-01-02, which the spec's date-time format refuses.
  local calls = {
    { "twilio_send_sms", { to = "+14155550123", body = "Conformance check" } },
    { "twilio_send_whatsapp", { to = "+14155550123", body = "Hello on WhatsApp" } },
    { "twilio_send_whatsapp", { to = "+14155550123", template_sid = "HX" .. ("ab"):rep(16),
                                template_variables = { ["1"] = "Ana", ["2"] = "3pm" } } },
    { "twilio_search_messages", { action = "search", limit = 3 } },
    { "twilio_search_messages", { action = "search", to = "+14155550123", from = "+18089255327",
                                  date_sent_after = "2019-05-01", date_sent_before = "2019-05-31T12:00:00Z",
                                  limit = 5 } },
    { "twilio_search_messages", { action = "search", to = "whatsapp:+14155550123", limit = 2 } },
    { "twilio_search_messages", { action = "get_details", message_sid = "SM" .. ("0a"):rep(16) } },
    { "twilio_search_messages", { action = "get_media", message_sid = "MM" .. ("0b"):rep(16) } },
    { "twilio_lookup_phone", { phone_number = "+14155550123" } },
    { "twilio_lookup_phone", { phone_number = "+14155550123", fields = { "line_type_intelligence", "caller_name",
      "sim_swap", "identity_match", "reassigned_number" } } },
    { "twilio_lookup_phone", { phone_number = "+14155550123", fields = {} } },
    { "twilio_manage_calls", { action = "list_recent", limit = 2 } },
    { "twilio_manage_calls", { action = "list_recent", to = "+14155550123", from = "+18089255327",
                               start_time_after = "2019-10-01", start_time_before = "2019-10-31", limit = 2 } },
    { "twilio_manage_calls", { action = "get_details", call_sid = "CA" .. ("0c"):rep(16) } },
    { "twilio_manage_calls", { action = "get_recordings", call_sid = "CA" .. ("0c"):rep(16) } },
    { "twilio_verify_phone", { action = "send_code", to = "+14155550123" } },
    { "twilio_verify_phone", { action = "send_code", to = "+14155550123", channel = "call" } },
    { "twilio_verify_phone", { action = "send_code", to = "ana@example.com", channel = "email" } },
    { "twilio_verify_phone", { action = "check_code", to = "+14155550123", code = "123456" } },
    { "twilio_account_overview", { action = "account_info" } },
    { "twilio_account_overview", { action = "list_phone_numbers" } },
    { "twilio_account_overview", { action = "usage_summary" } },
    { "twilio_account_overview", { action = "usage_summary", category = "sms", start_date = "2024-01-01",
                                   end_date = "2024-01-31" } },
  }

  it("drives every tool action with requests Prism accepts", function()
    local seen = {}
    H.async(function()
      local c = TW.session(srv, token)
      for _, call in ipairs(calls) do
        local r = TW.call(c, call[1], call[2])
        if os.getenv("SB_VERBOSE") then print(call[1], call[2].action or "", r.text) end
        assert.is_nil(r.isError, ("%s %s failed: %s"):format(call[1], call[2].action or "", r.text))
        assert.is_table(r.data, call[1] .. " returned no structured content")
        assert.truthy(#r.text > 0)
        seen[call[1] .. ":" .. (call[2].action or "")] = true
      end
      c:close()
    end, 120)
    for _, k in ipairs({ "twilio_send_sms:", "twilio_send_whatsapp:", "twilio_search_messages:search",
      "twilio_search_messages:get_details", "twilio_search_messages:get_media", "twilio_lookup_phone:",
      "twilio_manage_calls:list_recent", "twilio_manage_calls:get_details", "twilio_manage_calls:get_recordings",
      "twilio_verify_phone:send_code", "twilio_verify_phone:check_code", "twilio_account_overview:account_info",
      "twilio_account_overview:list_phone_numbers", "twilio_account_overview:usage_summary" }) do
      assert.is_true(seen[k], k .. " was not driven")
    end
    local requests = 0
    for _, p in ipairs(PRODUCTS) do
      local log = prism_log(p)
      local n = select(2, log:gsub("Request received", ""))
      requests = requests + n
      assert.truthy(n > 0, "Prism " .. p .. " saw no request")
      for line in log:gmatch("[^\n]+") do
        local bad = (line:find("[VALIDATOR]", 1, true) and line:find("Request", 1, true)
                      and not line:find("passed the validation", 1, true))
          or line:find("Violation: request", 1, true)
          or line:find("UNPROCESSABLE_ENTITY", 1, true) or line:find("UNAUTHORIZED", 1, true)
          or line:find(" 422", 1, true) or line:find(" 401", 1, true)
        assert.is_falsy(bad, ("Prism (%s) reports a request violation: %s"):format(p, line))
      end
    end
    assert.truthy(requests >= #calls)
  end)

  it("never returns the account's auth_token", function()
    H.async(function()
      local c = TW.session(srv, token)
      local r = TW.call(c, "twilio_account_overview", { action = "account_info" })
      assert.is_nil(r.isError)
      assert.is_nil(r.data.auth_token)
      assert.falsy(require("switchboard.json").encode(r):find("auth_token", 1, true))
      c:close()
    end)
  end)
end)
