-- An example agent session: a small MCP client over the agent socket that
-- walks through all seven Twilio tools the way an assistant would, and
-- prints each call and a short result. Run by examples/demo.sh against the
-- Twilio simulator:
--
--   SWITCHBOARD_SOCKET=run/agent.sock SWITCHBOARD_TOKEN=sbt_… SIM_URL=http://127.0.0.1:PORT \
--     ./switchboard exec examples/agent_session.lua
--
-- SIM_URL is only used to read the verification code the simulator "sent"
-- (a real person would read it on their phone). Exits 0 when every step
-- ended as expected.
local loop = require("core.loop")
local http = require("core.http")
local json = require("switchboard.json")

local SOCKET = os.getenv("SWITCHBOARD_SOCKET") or "./run/agent.sock"
local TOKEN = os.getenv("SWITCHBOARD_TOKEN")
local SIM = os.getenv("SIM_URL")
local PATIENT = os.getenv("DEMO_NUMBER") or "+14155550123"

local color = os.getenv("NO_COLOR") == nil and os.execute("test -t 1") == true
local function paint(code, s) return color and ("\27[" .. code .. "m" .. s .. "\27[0m") or s end

local function short(s, n)
  n = n or 220
  if (utf8.len(s) or #s) <= n then return s end
  return s:sub(1, (utf8.offset(s, n) or n) - 1) .. "…"
end

-- One JSON-RPC connection.
local Client = {}
Client.__index = Client

local function connect(path)
  local s, err = loop.connect(path)
  if not s then return nil, err end
  return setmetatable({ s = s, id = 0 }, Client)
end

function Client:request(method, params)
  self.id = self.id + 1
  local id = self.id
  assert(self.s:write(json.encode({ jsonrpc = "2.0", id = id, method = method, params = params }) .. "\n"))
  while true do
    local line, err = self.s:read_line(16 * 1048576, 60)
    if not line then error("the server closed the connection: " .. tostring(err), 0) end
    local m = json.decode(line)
    if type(m) == "table" and m.id == id and m.method == nil then return m end
  end
end

function Client:notify(method, params)
  self.s:write(json.encode({ jsonrpc = "2.0", method = method, params = params }) .. "\n")
end

local failures = 0
local step = 0

-- Call a tool, print it, and check the end against `expect`
-- ("ok" or "error"). Returns the structured result (or {}).
local function call(c, name, args, expect, note)
  step = step + 1
  expect = expect or "ok"
  print(("%s %s %s"):format(paint("1;36", ("%2d. %s"):format(step, name)), json.encode(args),
    note and paint("2", "(" .. note .. ")") or ""))
  local r = c:request("tools/call", { name = name, arguments = args })
  if r.error then
    failures = failures + 1
    print(paint("31", "    ✗ JSON-RPC error: " .. tostring(r.error.message)))
    return {}
  end
  local res = r.result
  local text = res.content and res.content[1] and res.content[1].text or ""
  local got = res.isError and "error" or "ok"
  local mark = got == expect and paint("32", "✓") or paint("31", "✗")
  if got ~= expect then failures = failures + 1 end
  print(("    %s %s%s"):format(mark, got == "error" and paint("33", "[isError] ") or "", short(text)))
  return res.structuredContent or {}
end

-- The code the simulator "delivered" to a destination.
local function code_for(to)
  if not SIM then return nil end
  local res = http.request({ url = SIM .. "/__sim/verify/codes", timeout = 5 })
  local body = res and res.status == 200 and json.decode(res.body)
  return type(body) == "table" and type(body.codes) == "table" and body.codes[to] or nil
end

local function session()
  if not TOKEN then error("SWITCHBOARD_TOKEN is not set", 0) end
  local c = assert(connect(SOCKET))
  local init = c:request("initialize", {
    protocolVersion = "2025-11-25", capabilities = {},
    clientInfo = { name = "switchboard-demo", version = "1" },
    _meta = { ["io.switchboard/token"] = TOKEN },
  })
  if not init.result then error("initialize failed: " .. json.encode(init.error), 0) end
  c:notify("notifications/initialized")
  print(paint("1", ("Connected to %s %s (MCP %s)."):format(init.result.serverInfo.name,
    init.result.serverInfo.version, init.result.protocolVersion)))
  if init.result.instructions then
    print(paint("2", "Instructions for the agent:"))
    for line in init.result.instructions:gmatch("[^\n]+") do print(paint("2", "  " .. line)) end
  end
  local list = c:request("tools/list", {})
  local names = {}
  for _, t in ipairs(list.result.tools) do names[#names + 1] = t.name end
  print(paint("1", ("%d tools: %s"):format(#names, table.concat(names, ", "))))
  print()

  local month = os.date("!%Y-%m-01")
  -- 1. know the account before doing anything that costs money
  call(c, "twilio_account_overview", { action = "account_info" })
  call(c, "twilio_account_overview", { action = "list_phone_numbers" })
  call(c, "twilio_account_overview", { action = "usage_summary" }, "ok", "this month, every category")
  -- 2. look numbers up before texting them
  call(c, "twilio_lookup_phone", { phone_number = PATIENT, fields = { "line_type_intelligence", "caller_name" } })
  call(c, "twilio_lookup_phone", { phone_number = "+14155550124" }, "ok", "a landline")
  call(c, "twilio_lookup_phone", { phone_number = "+1415555012" }, "ok", "too short: valid false, not an error")
  -- 3. send, then check delivery rather than resending
  local sms = call(c, "twilio_send_sms", { to = PATIENT,
    body = "Hi Ana, this is Acme Clinic: your appointment is confirmed for tomorrow at 10:00." })
  call(c, "twilio_send_sms", { to = "+14155550199", body = "Hello again!" }, "error", "this recipient opted out")
  if sms.sid then
    loop.sleep(1.2)
    call(c, "twilio_search_messages", { action = "get_details", message_sid = sms.sid }, "ok", "after a second")
  end
  call(c, "twilio_search_messages", { action = "search", to = PATIENT, date_sent_after = month, limit = 5 })
  call(c, "twilio_search_messages", { action = "get_media", message_sid = "MM00000000000000000000000000000003" })
  -- 4. WhatsApp: a template works any time; free-form only inside 24 hours
  call(c, "twilio_send_whatsapp", { to = PATIENT, template_sid = "HX00000000000000000000000000000001",
    template_variables = { ["1"] = "Ana", ["2"] = "3pm" } })
  call(c, "twilio_send_whatsapp", { to = PATIENT, body = "See you at 3pm!" }, "ok", "Ana wrote in today")
  call(c, "twilio_send_whatsapp", { to = "+14155550125", body = "Are you coming?" }, "error",
    "no message from this user in 24 hours")
  -- 5. calls are read-only
  local calls = call(c, "twilio_manage_calls", { action = "list_recent", limit = 5 })
  local first = calls.calls and calls.calls[#calls.calls]
  local call_sid = first and first.sid or "CA00000000000000000000000000000001"
  call(c, "twilio_manage_calls", { action = "get_details", call_sid = call_sid })
  call(c, "twilio_manage_calls", { action = "get_recordings", call_sid = call_sid })
  -- 6. verification: send, then check what the person reads back
  call(c, "twilio_verify_phone", { action = "send_code", to = PATIENT })
  call(c, "twilio_verify_phone", { action = "check_code", to = PATIENT, code = "000000" }, "ok",
    "a wrong code: approved false, not an error")
  local code = code_for(PATIENT)
  if code then
    local v = call(c, "twilio_verify_phone", { action = "check_code", to = PATIENT, code = code }, "ok",
      "the code from the simulator's phone")
    if v.approved ~= true then
      failures = failures + 1
      print(paint("31", "    ✗ the right code was not approved"))
    end
  end
  c.s:close()
  print()
  if failures == 0 then
    print(paint("1;32", ("All %d steps ended as expected."):format(step)))
  else
    print(paint("1;31", ("%d of %d steps did not end as expected."):format(failures, step)))
  end
end

local ok, err
loop.spawn(function()
  ok, err = xpcall(session, debug.traceback)
  loop.stop()
end)
if ok == nil then loop.run() end
if not ok then
  io.stderr:write("demo session failed: ", tostring(err), "\n")
  return 1
end
return failures == 0 and 0 or 1
