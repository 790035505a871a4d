-- bench/probe.lua: how long an agent waits while something else runs on
-- the server's loop. Connects to the agent socket, initializes with the
-- token, then sends one MCP `ping` at a time, 5 ms apart, until SIGTERM
-- or --duration seconds; writes {n, p50_ms, p99_ms, max_ms, over_100ms,
-- window_s} as JSON to --out. SIGUSR1 marks the start of the window of
-- interest and a second SIGUSR1 its end: then only the pings that were
-- waiting at some moment inside the window count (a ping held through a
-- stall of the whole window is one ping of that length).
--   switchboard exec bench/probe.lua --socket PATH --token TOKEN --out FILE [--duration 600]
local loop = require("core.loop")
local cjson = require("cjson")

local opts = { duration = "600" }
do
  local a, i = arg or {}, 1
  while a[i] do
    local k = a[i]:match("^%-%-(.+)$")
    if not k or a[i + 1] == nil then io.stderr:write("probe.lua: bad argument ", a[i], "\n"); return 2 end
    opts[k] = a[i + 1]
    i = i + 2
  end
end
if not (opts.socket and opts.token and opts.out) then
  io.stderr:write("usage: switchboard exec bench/probe.lua --socket PATH --token TOKEN --out FILE [--duration S]\n")
  return 2
end

local stop = false
local pings = {} -- { sent, answered } in loop.time() seconds
local marks = {}
local rc = 0

local function roundtrip(s, id, line)
  local ok, err = s:write(line)
  if not ok then return nil, err end
  while true do
    local resp, rerr = s:read_line(1048576, 600)
    if not resp then return nil, rerr end
    local dok, msg = pcall(cjson.decode, resp)
    if dok and type(msg) == "table" and msg.id == id then return msg end
  end
end

local function report()
  local w0, w1 = marks[1] or -math.huge, marks[2] or math.huge
  local lat = {}
  for _, p in ipairs(pings) do
    if p[2] >= w0 and p[1] <= w1 then lat[#lat + 1] = (p[2] - p[1]) * 1000 end
  end
  table.sort(lat)
  local n = #lat
  local function q(p) return n > 0 and lat[math.max(1, math.min(n, math.ceil(p * n)))] or 0 end
  local over = 0
  for _, v in ipairs(lat) do if v > 100 then over = over + 1 end end
  local f = assert(io.open(opts.out, "w"))
  f:write(cjson.encode({ n = n, p50_ms = q(0.5), p99_ms = q(0.99), max_ms = q(1), over_100ms = over,
    window_s = marks[2] and (marks[2] - marks[1]) or cjson.null }), "\n")
  f:close()
end

loop.set_error_handler(function(msg) io.stderr:write("probe.lua: ", msg, "\n"); rc = 1; loop.stop() end)
local sigs = {}
for _, name in ipairs({ "TERM", "INT" }) do sigs[#sigs + 1] = loop.signal(name, function() stop = true end) end
sigs[#sigs + 1] = loop.signal("USR1", function() marks[#marks + 1] = loop.time() end)

loop.spawn(function()
  local s, err = loop.connect(opts.socket)
  if not s then io.stderr:write("probe.lua: ", tostring(err), "\n"); rc = 1; loop.stop(); return end
  local init = roundtrip(s, 0, cjson.encode({ jsonrpc = "2.0", id = 0, method = "initialize", params = {
    protocolVersion = "2025-11-25", capabilities = {}, clientInfo = { name = "probe", version = "1" },
    _meta = { ["io.switchboard/token"] = opts.token } } }) .. "\n")
  if not init or init.error then
    io.stderr:write("probe.lua: initialize refused\n"); rc = 1; loop.stop(); return
  end
  s:write('{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
  local deadline = loop.time() + tonumber(opts.duration)
  local id = 0
  while not stop and loop.time() < deadline do
    id = id + 1
    local a = loop.time()
    local msg, rerr = roundtrip(s, id, ('{"jsonrpc":"2.0","id":%d,"method":"ping"}\n'):format(id))
    if not msg then io.stderr:write("probe.lua: ", tostring(rerr), "\n"); rc = 1; break end
    pings[#pings + 1] = { a, loop.time() }
    loop.sleep(0.005)
  end
  s:close()
  report()
  for _, sg in ipairs(sigs) do sg:close() end
  loop.stop()
end)
loop.run()
return rc
