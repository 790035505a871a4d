-- Admin requests: JSON lines through the admin socket's read loop
-- (admin:serve) on a fresh copy of the in-process runtime's store for each
-- input (tenant "acme" with agent "bot", a Twilio connection and the held
-- escalation 1), Twilio unreachable.
-- Invariants: nothing raises and nothing is logged as an internal error;
-- each non-blank line gets one answer, a JSON-RPC 2.0 response (exactly
-- one of result and error; an error has an integer code and a message),
-- valid UTF-8 when the request was; the stored API key secret and the agent
-- token never appear in an answer.
local root = ...
local runner = require("fuzz.runner")
local logged = runner.capture_log()
local rtmod = require("fuzz.rt")
local json = require("switchboard.json")

local rt = rtmod.new("admin", root)
local SECRET = rtmod.SECRET
local srv = rt.server

return function(bytes)
  rt:restore()
  logged()
  local lines = rtmod.split(bytes)
  local stream = rtmod.stream(lines, 1048576)
  local co = coroutine.create(function() srv.admin:serve(stream) end)
  local ok, err = coroutine.resume(co)
  assert(ok, err)
  rt.drain()
  assert(coroutine.status(co) == "dead", "the admin loop waited on the event loop")
  local errs = logged()
  assert(#errs == 0, "logged as an error: " .. table.concat(errs, " / "))
  assert(stream:closed(), "the stream was not closed")
  local out, whole = stream:lines()
  assert(whole, "output does not end with a newline")
  local asked = {}
  for _, l in ipairs(lines) do
    if not l:gsub("\r$", ""):match("^%s*$") then asked[#asked + 1] = l end
  end
  assert(#out == #asked, ("%d requests, %d answers"):format(#asked, #out))
  for i, line in ipairs(out) do
    local where = ("answer %d"):format(i)
    if runner.utf8_ok(asked[i]) then assert(runner.utf8_ok(line), where .. ": invalid UTF-8") end
    -- (an answer may repeat what the request itself said)
    if not bytes:find(SECRET, 1, true) then
      assert(not line:find(SECRET, 1, true), where .. ": the stored API key secret")
    end
    if not bytes:find(rt.token, 1, true) then
      assert(not line:find(rt.token, 1, true), where .. ": the agent's token")
    end
    local m, derr = json.decode(line)
    assert(type(m) == "table", where .. ": not a JSON object: " .. tostring(derr))
    assert(m.jsonrpc == "2.0", where .. ": jsonrpc is not \"2.0\"")
    assert((m.result ~= nil) ~= (m.error ~= nil), where .. ": not exactly one of result and error")
    if m.error then
      local code = m.error.code
      assert(type(code) == "number" and code == math.floor(code) and type(m.error.message) == "string",
        where .. ": error without an integer code and a string message")
    end
  end
end
