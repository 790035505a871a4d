-- bench/load.lua: closed-loop MCP load generator for `make bench`.
--
--   ./switchboard exec bench/load.lua --socket PATH --token TOKEN --conns C
--       [--warmup 1] [--duration 5] [--pid SERVER_PID] [--clk-tck 100]
--       [--tool example_fetch] [--path /hello.json]
--
-- Opens C connections to the agent socket, initializes each one (token in
-- params._meta["io.switchboard/token"]), then every connection calls the
-- tool in a closed loop (one call in flight per connection). Calls that
-- start after the warmup and finish inside the measured window are timed.
-- With --pid, the server's utime+stime over the window is read from
-- /proc/PID/stat. The last line of stdout is machine-readable:
--   RESULT conns calls seconds calls_per_s p50_us p99_us cpu_us_per_call errors
--          client_cpu_us_per_call
-- (tab-separated; cpu_us_per_call is "-" without --pid; the last field is
-- this load generator's own CPU per call). Exit 0, or 1 when
-- a connection could not be set up or any call failed (a JSON-RPC error,
-- isError, or a structuredContent.status other than 200).
local loop = require("core.loop")
local cjson = require("cjson")

local opts = {
  socket = nil, token = nil, conns = 1, warmup = 1, duration = 5,
  pid = nil, ["clk-tck"] = 100, tool = "example_fetch", path = "/hello.json",
}
do
  local args = arg or {}
  local i = 1
  while args[i] do
    local k = args[i]:match("^%-%-(.+)$")
    if not k or opts[k] == nil and k ~= "socket" and k ~= "token" and k ~= "pid" then
      io.stderr:write("load.lua: unknown argument ", tostring(args[i]), "\n")
      return 2
    end
    opts[k] = args[i + 1]
    i = i + 2
  end
end
local function num(name)
  local v = tonumber(opts[name])
  if not v then error("load.lua: --" .. name .. " must be a number") end
  return v
end
if not opts.socket or not opts.token then
  io.stderr:write("usage: switchboard exec bench/load.lua --socket PATH --token TOKEN --conns C ",
    "[--warmup S] [--duration S] [--pid PID] [--clk-tck N]\n")
  return 2
end
local conns = math.tointeger(num("conns")) or error("--conns must be an integer")
local warmup, duration = num("warmup"), num("duration")
local clk_tck = num("clk-tck")
local pid = opts.pid and math.tointeger(tonumber(opts.pid))

local LINE_MAX = 4 * 1024 * 1024
local IO_TIMEOUT = 30

-- utime + stime of pid in seconds (fields 14 and 15 of /proc/PID/stat;
-- the command name in field 2 may hold spaces, so split after its ')').
local function cpu_seconds(who)
  if not who then return nil end
  local f = io.open("/proc/" .. who .. "/stat", "r")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  local rest = s:match("%) (.*)$")
  if not rest then return nil end
  local fields = {}
  for w in rest:gmatch("%S+") do fields[#fields + 1] = w end
  -- rest starts at field 3 (state): utime = field 14 -> index 12
  return (tonumber(fields[12]) + tonumber(fields[13])) / clk_tck
end

local failures = {}
local function fail(msg)
  if #failures < 10 then failures[#failures + 1] = msg end
end

-- One request, one matching response (notifications and other ids are
-- skipped). Returns the decoded message or nil, err.
local function roundtrip(stream, id, line)
  local ok, err = stream:write(line)
  if not ok then return nil, "write: " .. tostring(err) end
  while true do
    local resp, rerr = stream:read_line(LINE_MAX, IO_TIMEOUT)
    if not resp then return nil, "read: " .. tostring(rerr) end
    local dok, msg = pcall(cjson.decode, resp)
    if not dok then return nil, "bad JSON from server: " .. resp:sub(1, 200) end
    if msg.id == id then return msg end
  end
end

local function open_session(n)
  local stream, err = loop.connect(opts.socket)
  if not stream then return nil, "connect " .. opts.socket .. ": " .. tostring(err) end
  local init = cjson.encode({
    jsonrpc = "2.0", id = 0, method = "initialize",
    params = {
      protocolVersion = "2025-11-25",
      capabilities = {},
      clientInfo = { name = "bench", version = "1" },
      _meta = { ["io.switchboard/token"] = opts.token },
    },
  }) .. "\n"
  local msg, rerr = roundtrip(stream, 0, init)
  if not msg then stream:close(); return nil, "initialize #" .. n .. ": " .. rerr end
  if msg.error or type(msg.result) ~= "table" then
    stream:close()
    return nil, "initialize #" .. n .. " refused: " .. cjson.encode(msg.error or msg)
  end
  stream:write('{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
  return stream
end

local call_fmt = '{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":'
  .. cjson.encode({ name = opts.tool, arguments = { path = opts.path } }):gsub("%%", "%%%%")
  .. "}\n"

local latencies = {} -- microseconds, measured-window calls only
local calls_total, errors = 0, 0
local window = {} -- t0, t1 (monotonic), cpu0, cpu1
local running = 0
local sampled = false -- the sampler has read both window edges
local exit_code = 0

local function finish()
  local measured = window.t1 - window.t0
  table.sort(latencies)
  local function pct(p)
    local n = #latencies
    if n == 0 then return 0 end
    local idx = math.max(1, math.min(n, math.ceil(p * n)))
    return latencies[idx]
  end
  local calls = #latencies
  local cpu = "-"
  if window.cpu0 and window.cpu1 and calls > 0 then
    -- CPU over the window divided by calls completed in it
    cpu = string.format("%.1f", (window.cpu1 - window.cpu0) * 1e6 / calls)
  end
  local self_cpu = "-"
  if window.self0 and window.self1 and calls > 0 then
    self_cpu = string.format("%.1f", (window.self1 - window.self0) * 1e6 / calls)
  end
  io.stderr:write(string.format(
    "load.lua: conns=%d calls=%d (all phases %d) window=%.2fs errors=%d\n",
    conns, calls, calls_total, measured, errors))
  for _, f in ipairs(failures) do io.stderr:write("load.lua: error: ", f, "\n") end
  io.stdout:write(string.format("RESULT\t%d\t%d\t%.3f\t%.1f\t%.1f\t%.1f\t%s\t%d\t%s\n",
    conns, calls, measured, calls / measured, pct(0.50), pct(0.99), cpu, errors, self_cpu))
  io.stdout:flush()
  if errors > 0 then exit_code = 1 end
  loop.stop()
end

local function worker(stream, wid, t_start, t_end)
  local id = wid * 1000000000
  while true do
    local before = loop.time()
    if before >= t_end then break end
    id = id + 1
    local msg, err = roundtrip(stream, id, string.format(call_fmt, id))
    local after = loop.time()
    calls_total = calls_total + 1
    if not msg then
      errors = errors + 1
      fail("conn " .. wid .. ": " .. err)
      break
    end
    local res = msg.result
    local sc = type(res) == "table" and res.structuredContent
    if msg.error or type(res) ~= "table" or res.isError or type(sc) ~= "table" or sc.status ~= 200 then
      errors = errors + 1
      fail("conn " .. wid .. ": " .. cjson.encode(msg.error or res))
    elseif before >= t_start and after <= t_end then
      latencies[#latencies + 1] = (after - before) * 1e6
    end
  end
  stream:close()
  running = running - 1
  if running == 0 and sampled then finish() end
end

loop.set_error_handler(function(msg)
  io.stderr:write("load.lua: ", tostring(msg), "\n")
  exit_code = 1
  loop.stop()
end)

loop.spawn(function()
  local streams = {}
  for n = 1, conns do
    local s, err = open_session(n)
    if not s then
      io.stderr:write("load.lua: ", err, "\n")
      for _, o in ipairs(streams) do o:close() end
      exit_code = 1
      loop.stop()
      return
    end
    streams[n] = s
  end
  local now = loop.time()
  local t_start, t_end = now + warmup, now + warmup + duration
  running = conns
  for n, s in ipairs(streams) do loop.spawn(worker, s, n, t_start, t_end) end
  -- the sampler: CPU time at the window's edges
  loop.sleep(math.max(0, t_start - loop.time()))
  window.t0, window.cpu0, window.self0 = loop.time(), cpu_seconds(pid), cpu_seconds("self")
  loop.sleep(math.max(0, t_end - loop.time()))
  window.t1, window.cpu1, window.self1 = loop.time(), cpu_seconds(pid), cpu_seconds("self")
  sampled = true
  if running == 0 then finish() end
end)

loop.run()
return exit_code
