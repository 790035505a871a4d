-- MCP lines and batches through a real session (Session:run, the read
-- loop of one agent connection) on the in-process runtime: every tools/call
-- goes through the whole pipeline (schema, policies, handler, audit), with
-- Twilio unreachable.
-- Input: byte 1 picks the start (0: a fresh connection, 1-4: initialized
-- with that protocol version, VERSIONS order); the rest is lines, where
-- $TOKEN stands for the agent's token.
-- Invariants: nothing raises and nothing is logged as an internal error;
-- every line written is valid UTF-8 and valid JSON-RPC 2.0; a ping sent
-- after the input is answered (the connection stays usable); when the
-- connection ends its slot is freed and no call is left in flight.
local root = ...
local runner = require("fuzz.runner")
local logged = runner.capture_log()
local rtmod = require("fuzz.rt")
local vault = require("core.vault")
local json = require("switchboard.json")
local mcp = require("switchboard.mcp")

-- Open defects a long fuzz run may set aside to look for others
-- (SB_FUZZ_TOLERATE=utf8,encode; never in the corpus replay):
--   utf8: input that is not valid UTF-8 is rejected before the session
--         (the session echoes it back today);
--   encode: a reply that cannot be encoded (an id of 1e400) is not counted.
local tolerate = {}
for w in (os.getenv("SB_FUZZ_TOLERATE") or ""):gmatch("[%w_]+") do tolerate[w] = true end

local rt = rtmod.new("mcp", root)
local srv = rt.server
local FINAL = "fuzz-final-" .. vault.hex(vault.random(8))
local calls = 0

local function check_message(m, where)
  assert(type(m) == "table", where .. ": not an object")
  assert(m.jsonrpc == "2.0", where .. ": jsonrpc is not \"2.0\"")
  if m.method ~= nil then
    assert(type(m.method) == "string", where .. ": method is not a string")
    assert(m.id == nil, where .. ": the server sent a request")
    return
  end
  assert(m.id ~= nil, where .. ": a response without id")
  local id = m.id
  assert(id == json.null or type(id) == "string" or math.type(id) == "integer"
    or (type(id) == "number" and id == math.floor(id) and id > -math.huge and id < math.huge),
    where .. ": the id is not a string, an integer or null")
  assert((m.result ~= nil) ~= (m.error ~= nil), where .. ": not exactly one of result and error")
  if m.error ~= nil then
    local code = type(m.error) == "table" and m.error.code
    assert(type(code) == "number" and code == math.floor(code) and type(m.error.message) == "string",
      where .. ": error without an integer code and a string message")
  else
    assert(type(m.result) == "table", where .. ": result is not an object")
  end
end

return function(bytes)
  calls = calls + 1
  -- what an earlier input left behind (a failed one may leave anything)
  if calls % 500 == 0 then rt:restore() end
  srv.sessions, srv.nsessions, srv.inflight = {}, 0, 0
  logged()
  if tolerate.utf8 and not runner.utf8_ok(bytes) then runner.reject("invalid UTF-8 (tolerated)") end
  local mode = bytes:byte(1) or 0
  local lines = rtmod.split((bytes:sub(2):gsub("%$TOKEN", rt.token)))
  local start = {}
  if mode % 5 > 0 then
    start[1] = json.encode({ jsonrpc = "2.0", id = "fuzz-init", method = "initialize", params = {
      protocolVersion = mcp.VERSIONS[mode % 5], _meta = { [mcp.TOKEN_KEY] = rt.token },
      capabilities = {}, clientInfo = { name = "fuzz", version = "1" } } })
    start[2] = '{"jsonrpc":"2.0","method":"notifications/initialized"}'
  end
  local all = {}
  for _, l in ipairs(start) do all[#all + 1] = l end
  for _, l in ipairs(lines) do all[#all + 1] = l end
  all[#all + 1] = ('{"jsonrpc":"2.0","id":"%s","method":"ping"}'):format(FINAL)
  local stream = rtmod.stream(all, srv.cfg.limits.line_bytes)
  local s = mcp.new(srv, stream, calls)
  srv.sessions[s] = true
  srv.nsessions = srv.nsessions + 1
  local co = coroutine.create(function() s:run() end)
  local ok, err = coroutine.resume(co)
  if not ok and tolerate.encode and tostring(err):find("Cannot serialise", 1, true) then
    runner.reject("an unencodable reply (tolerated)")
  end
  assert(ok, err)
  rt.drain()
  assert(coroutine.status(co) == "dead", "the read loop waited on the event loop")
  local errs = logged()
  if tolerate.encode then
    for i = #errs, 1, -1 do
      if errs[i]:find("could not encode a message", 1, true) then table.remove(errs, i) end
    end
  end
  assert(#errs == 0, "logged as an error: " .. table.concat(errs, " / "))
  assert(srv.nsessions == 0 and next(srv.sessions) == nil, "the connection's slot was not freed")
  assert(srv.inflight == 0, "a call is still in flight after the connection ended")
  assert(stream:closed(), "the stream was not closed")

  local out, whole = stream:lines()
  assert(whole, "output does not end with a newline")
  local answered = false
  for i, line in ipairs(out) do
    local where = ("output line %d"):format(i)
    assert(runner.utf8_ok(line), where .. ": invalid UTF-8")
    local v, derr = json.decode(line)
    assert(v ~= nil, where .. ": not JSON: " .. tostring(derr))
    if type(v) == "table" and rawget(v, 1) ~= nil then
      for j, m in ipairs(v) do check_message(m, ("%s item %d"):format(where, j)) end
    else
      check_message(v, where)
      if v.id == FINAL then
        assert(v.result ~= nil, "the final ping was refused: " .. line)
        answered = true
      end
    end
  end
  assert(answered, "the final ping was not answered: the connection became unusable")
end
