-- bench/load.lua: closed-loop MCP load on ONE connection for `make bench`.
--
--   switchboard exec bench/load.lua (--socket PATH --token TOKEN | --stdio)
--       --tool read|write --inflight N [--warmup 1] [--duration 3]
--       [--pids serve=PID,bridge=PID] [--clk-tck 100] [--to-offset 0]
--       [--calls N] [--label TEXT] --out FILE
--
-- --socket: the agent Unix socket, the token in initialize's
-- params._meta["io.switchboard/token"]. --stdio: JSON-RPC lines on fd 1,
-- answers on fd 0 (run.sh connects them to a `switchboard connect`
-- bridge, which adds the token itself).
-- N calls stay in flight on the connection (one reader dispatches the
-- answers by id), like an MCP client multiplexing one session:
--   read:  twilio_search_messages {action = "search", limit = 20}
--   write: twilio_send_sms {to = +1415867xxxx (10,000 rotating), body = …}
-- Calls that start after the warmup and end inside the measured window
-- are timed; calls/s counts the answers inside the window. With --pids,
-- utime+stime of each process over the window (/proc/PID/stat) divided by
-- the answers in the window (--calls N: stop after N calls, the window
-- from the end of the warmup to the last answer). Writes one JSON object to --out; exit 1 when
-- the connection could not be set up or any call failed (a JSON-RPC
-- error, isError, or a result that is not what the workload expects).
local loop = require("core.loop")
local cjson = require("cjson")

local opts = { warmup = "1", duration = "3", ["clk-tck"] = "100", ["to-offset"] = "0", label = "", inflight = "1" }
local KNOWN = { socket = 1, token = 1, stdio = 0, tool = 1, inflight = 1, warmup = 1, duration = 1, pids = 1,
                ["clk-tck"] = 1, ["to-offset"] = 1, label = 1, out = 1, calls = 1 }
do
  local a, i = arg or {}, 1
  while a[i] do
    local k = a[i]:match("^%-%-(.+)$")
    if not k or not KNOWN[k] then
      io.stderr:write("load.lua: unknown argument ", tostring(a[i]), "\n")
      return 2
    end
    if KNOWN[k] == 0 then opts[k] = true; i = i + 1 else opts[k] = a[i + 1]; i = i + 2 end
  end
end
if not opts.out or not (opts.stdio or (opts.socket and opts.token)) or (opts.tool ~= "read" and opts.tool ~= "write") then
  io.stderr:write("usage: switchboard exec bench/load.lua (--socket PATH --token T | --stdio) --tool read|write",
    " --inflight N [--warmup S] [--duration S] [--pids name=PID,…] --out FILE\n")
  return 2
end
local function num(name)
  return tonumber(opts[name]) or error("load.lua: --" .. name .. " must be a number")
end
local inflight = math.tointeger(num("inflight")) or error("load.lua: --inflight must be an integer")
local warmup, duration, clk_tck = num("warmup"), num("duration"), num("clk-tck")
local to_seq = math.tointeger(num("to-offset")) or 0
local calls_limit = opts.calls and (math.tointeger(num("calls")) or error("load.lua: --calls must be an integer"))
local pids = {}
for name, pid in (opts.pids or ""):gmatch("([%w_]+)=(%d+)") do pids[name] = pid end

local LINE_MAX = 16 * 1024 * 1024
local IO_TIMEOUT = 60
local BODY = "Your appointment is confirmed for tomorrow morning."

-- utime + stime in seconds (fields 14 and 15; split after the ')' of the
-- command name, which may hold spaces).
local function cpu_seconds(pid)
  local f = io.open("/proc/" .. pid .. "/stat", "r")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  local rest = s and s:match("%) (.*)$")
  if not rest then return nil end
  local fields = {}
  for w in rest:gmatch("%S+") do fields[#fields + 1] = w end
  return (tonumber(fields[12]) + tonumber(fields[13])) / clk_tck
end
local function cpu_all()
  local t = { self = cpu_seconds("self") }
  for name, pid in pairs(pids) do t[name] = cpu_seconds(pid) end
  return t
end

local input, output
local waiting = {} -- id -> coroutine
local failures, errors = {}, 0
local function fail(msg)
  errors = errors + 1
  if #failures < 5 then failures[#failures + 1] = msg end
end

local function call_line(id)
  local arguments
  if opts.tool == "read" then
    arguments = { action = "search", limit = 20 }
  else
    arguments = { to = ("+1415867%04d"):format(to_seq % 10000), body = BODY }
    to_seq = to_seq + 1
  end
  return cjson.encode({ jsonrpc = "2.0", id = id, method = "tools/call", params = {
    name = opts.tool == "read" and "twilio_search_messages" or "twilio_send_sms", arguments = arguments } }) .. "\n"
end

local function result_ok(msg)
  local res = msg.result
  if msg.error or type(res) ~= "table" or res.isError then return false end
  local sc = res.structuredContent
  if type(sc) ~= "table" then return false end
  if opts.tool == "read" then return type(sc.count) == "number" end
  return sc.outcome == "sent"
end

-- The one reader: answers go to the coroutine waiting for their id.
local reader_done = false
local function reader()
  while true do
    local line, err = input:read_line(LINE_MAX, IO_TIMEOUT)
    if not line then
      reader_done = true
      for id, co in pairs(waiting) do waiting[id] = nil; loop.wake(co, nil, "read: " .. tostring(err)) end
      return
    end
    local ok, msg = pcall(cjson.decode, line)
    if ok and type(msg) == "table" and msg.id ~= nil then
      local co = waiting[msg.id]
      if co then waiting[msg.id] = nil; loop.wake(co, msg) end
    end
  end
end

local function request(id, line)
  if reader_done then return nil, "connection closed" end
  waiting[id] = coroutine.running()
  local ok, err = output:write(line)
  if not ok then waiting[id] = nil; return nil, "write: " .. tostring(err) end
  return loop.wait()
end

local latencies, window_calls = {}, 0
local t_start, t_end
local running = 0
local sampled, finished = false, false
local window = {}
local exit_code = 0

local function finish()
  if finished then return end
  finished = true
  local secs = window.t1 - window.t0
  table.sort(latencies)
  local function pct(p)
    local n = #latencies
    if n == 0 then return 0 end
    return latencies[math.max(1, math.min(n, math.ceil(p * n)))]
  end
  local cpu = {}
  for name in pairs(window.cpu0) do
    if window.cpu0[name] and window.cpu1[name] and window_calls > 0 then
      cpu[name] = (window.cpu1[name] - window.cpu0[name]) * 1e6 / window_calls
    end
  end
  local r = {
    label = opts.label, via = opts.stdio and "bridge" or "direct", tool = opts.tool, inflight = inflight,
    calls = window_calls, timed = #latencies, seconds = secs, rps = window_calls / secs,
    p50_us = pct(0.50), p99_us = pct(0.99), max_us = pct(1), errors = errors,
    first_errors = failures, client_cpu_us_per_call = cpu.self, cpu_us_per_call = cpu,
  }
  cpu.self = nil
  local f = assert(io.open(opts.out, "w"))
  f:write(cjson.encode(r), "\n")
  f:close()
  io.stderr:write(("load.lua: %s %s C=%d: %.0f calls/s, p50 %.0f us, p99 %.0f us, errors %d%s\n"):format(
    r.via, r.tool, inflight, r.rps, r.p50_us, r.p99_us, errors, failures[1] and (": " .. failures[1]) or ""))
  if errors > 0 or window_calls == 0 then exit_code = 1 end
  loop.stop()
end

local next_id = 0
local function worker()
  while true do
    local before = loop.time()
    if before >= t_end or (calls_limit and next_id > calls_limit) then break end
    next_id = next_id + 1
    local id = next_id
    local msg, err = request(id, call_line(id))
    local after = loop.time()
    if not msg then fail(err); break end
    if not result_ok(msg) then
      fail(cjson.encode(msg.error or msg.result):sub(1, 300))
    else
      if after >= t_start and after <= t_end then window_calls = window_calls + 1 end
      if before >= t_start and after <= t_end then latencies[#latencies + 1] = (after - before) * 1e6 end
    end
  end
  running = running - 1
  if running == 0 and calls_limit and not sampled then
    window.t0, window.cpu0 = window.t0 or t_start, window.cpu0 or cpu_all()
    window.t1, window.cpu1 = loop.time(), cpu_all()
    sampled = true
  end
  if running == 0 and sampled then finish() end
end

loop.set_error_handler(function(msg)
  io.stderr:write("load.lua: ", tostring(msg), "\n")
  exit_code = 1
  loop.stop()
end)

loop.spawn(function()
  if opts.stdio then
    input, output = loop.stream(0), loop.stream(1)
  else
    local s, err = loop.connect(opts.socket)
    if not s then
      io.stderr:write("load.lua: connect ", opts.socket, ": ", tostring(err), "\n")
      exit_code = 1
      loop.stop()
      return
    end
    input, output = s, s
  end
  loop.spawn(reader)
  local params = { protocolVersion = "2025-11-25", capabilities = {}, clientInfo = { name = "bench", version = "1" } }
  if opts.token then params._meta = { ["io.switchboard/token"] = opts.token } end
  next_id = 1
  local msg, err = request(1, cjson.encode({ jsonrpc = "2.0", id = 1, method = "initialize", params = params }) .. "\n")
  if not msg or msg.error or type(msg.result) ~= "table" then
    io.stderr:write("load.lua: initialize failed: ", tostring(err or cjson.encode(msg.error or msg)), "\n")
    exit_code = 1
    loop.stop()
    return
  end
  output:write('{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
  local now = loop.time()
  t_start, t_end = now + warmup, now + warmup + duration
  running = inflight
  for _ = 1, inflight do loop.spawn(worker) end
  loop.sleep(math.max(0, t_start - loop.time()))
  window.t0, window.cpu0 = loop.time(), cpu_all()
  loop.sleep(math.max(0, t_end - loop.time()))
  window.t1, window.cpu1 = loop.time(), cpu_all()
  sampled = true
  if running == 0 then finish() end
end)

loop.run()
return exit_code
