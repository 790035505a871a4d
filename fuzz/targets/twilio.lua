-- Twilio responses into the result shaping: a tools/call through the
-- pipeline (schema, policies, the tool's handler, the REST client, the
-- send records, the audit) whose HTTP requests are answered with fuzzed
-- responses. Input: byte 1 picks the call (CASES); the rest is the
-- responses, in the order the requests are made, separated by NUL bytes,
-- each a status byte (STATUSES) then the body. Requests past the last
-- response find Twilio unreachable.
-- Invariants: nothing raises and nothing is logged as an internal error;
-- the result is an MCP CallToolResult with a text that encodes as JSON;
-- a successful result's structuredContent conforms to the tool's
-- outputSchema.
local root = ...
local runner = require("fuzz.runner")
local logged = runner.capture_log()
local rtmod = require("fuzz.rt")
local loop = require("core.loop")
local json = require("switchboard.json")
local schema = require("switchboard.schema")

-- no waiting: a retry's backoff is skipped
loop.sleep = function() end

local rt = rtmod.new("twilio", root)
local srv = rt.server
local TO = "+14155550123"
local SID = "0123456789abcdef0123456789abcdef"

local CASES = {
  { "twilio_account_overview", { action = "account_info" } },
  { "twilio_account_overview", { action = "list_phone_numbers" } },
  { "twilio_account_overview", { action = "usage_summary", start_date = "2026-01-01", end_date = "2026-01-31" } },
  { "twilio_lookup_phone", { phone_number = TO } },
  { "twilio_lookup_phone", { phone_number = TO, fields = { "line_type_intelligence", "caller_name" } } },
  { "twilio_manage_calls", { action = "list_recent", limit = 5 } },
  { "twilio_manage_calls", { action = "get_details", call_sid = "CA" .. SID } },
  { "twilio_manage_calls", { action = "get_recordings", call_sid = "CA" .. SID } },
  { "twilio_search_messages", { action = "search", limit = 5, to = TO, date_sent_after = "2026-01-01" } },
  { "twilio_search_messages", { action = "get_details", message_sid = "SM" .. SID } },
  { "twilio_search_messages", { action = "get_media", message_sid = "MM" .. SID } },
  { "twilio_send_sms", { to = TO, body = "hello" } },
  { "twilio_send_sms", { to = TO, body = "the picture", media_url = "https://example.com/a.png" } },
  { "twilio_send_whatsapp", { to = TO, body = "hello" } },
  { "twilio_send_whatsapp", { to = TO, template_sid = "HX" .. SID, template_variables = { ["1"] = "Ada" } } },
  { "twilio_verify_phone", { action = "send_code", to = TO, channel = "sms" } },
  { "twilio_verify_phone", { action = "check_code", to = TO, code = "123456" } },
}
local STATUSES = { 200, 201, 200, 204, 400, 401, 403, 404, 429, 500, 503, 200, 302, 409, 422, 200 }

for _, c in ipairs(CASES) do
  local tool = assert(srv.registry.tools[c[1]], c[1])
  local args, err = schema.validate(tool.input_schema, c[2])
  assert(args, err)
  if tool.check then assert(tool.check(args)) end
end

local responses, next_response
local function respond()
  local r = responses[next_response]
  if not r then return nil, "could not connect to server (fuzz: no more responses)", { sent = false, code = 7 } end
  next_response = next_response + 1
  local status = STATUSES[(r:byte(1) or 0) % #STATUSES + 1]
  local headers = { ["content-type"] = "application/json" }
  if status == 429 then headers["retry-after"] = "0" end
  return { status = status, headers = headers, body = r:sub(2) }
end
rtmod.set_http(respond)

return function(bytes)
  rt:restore()
  logged()
  local c = CASES[(bytes:byte(1) or 0) % #CASES + 1]
  local tool = srv.registry.tools[c[1]]
  responses, next_response = {}, 1
  for r in (bytes:sub(2) .. "\0"):gmatch("([^%z]*)%z") do responses[#responses + 1] = r end
  local args = json.decode(json.encode(c[2])) -- as the MCP layer hands them over
  local res
  local co = coroutine.create(function() res = rt:call(c[1], args) end)
  local ok, err = coroutine.resume(co)
  assert(ok, err)
  rt.drain()
  assert(coroutine.status(co) == "dead", "the call waited on the event loop")
  local errs = logged()
  assert(#errs == 0, "logged as an error: " .. table.concat(errs, " / "))
  assert(type(res) == "table" and type(res.content) == "table" and res.content[1]
    and res.content[1].type == "text" and type(res.content[1].text) == "string" and res.content[1].text ~= "",
    "not a CallToolResult with a text")
  local eok, line = pcall(json.encode, { jsonrpc = "2.0", id = 1, result = res })
  assert(eok, "the result does not encode as JSON: " .. tostring(line))
  if not res.isError and res.structuredContent ~= nil and tool.output_schema then
    local data = json.decode(line).result.structuredContent
    local vok, verr = schema.validate(tool.output_schema, data)
    assert(vok, ("%s: structuredContent does not conform to the outputSchema: %s"):format(tool.name, tostring(verr)))
  end
end
