-- bench/sends_load.lua: closed-loop twilio_send_sms load (bench/sends.sh).
--   switchboard exec bench/sends_load.lua SOCKET TOKEN CONNS SECONDS [SERVER_PID]
-- C connections, one call in flight on each, rotating 10,000 recipients;
-- 1 s of warmup, then SECONDS measured. Prints calls/s, p50/p99 and the
-- server's CPU per call (from /proc/PID/stat, 100 ticks a second).
local loop = require("core.loop")
local cjson = require("cjson")

local socket, token = arg[1], arg[2]
local conns, seconds, pid = tonumber(arg[3]) or 16, tonumber(arg[4]) or 5, arg[5]

local function cpu()
  local f = pid and io.open("/proc/" .. pid .. "/stat")
  if not f then return nil end
  local rest = f:read("a"):match("%) (.*)$")
  f:close()
  local t = {}
  for w in rest:gmatch("%S+") do t[#t + 1] = w end
  return (tonumber(t[12]) + tonumber(t[13])) / 100
end

local function roundtrip(s, id, line)
  assert(s:write(line))
  while true do
    local l = assert(s:read_line(1 << 22, 30))
    local m = cjson.decode(l)
    if m.id == id then return m end
  end
end

local lat, errors, n_seq = {}, 0, 0
local t_start, t_end, cpu0, cpu1
local running = conns

local function worker(w)
  local s = assert(loop.connect(socket))
  local init = roundtrip(s, 0, cjson.encode({ jsonrpc = "2.0", id = 0, method = "initialize", params = {
    protocolVersion = "2025-11-25", capabilities = {}, clientInfo = { name = "sends", version = "1" },
    _meta = { ["io.switchboard/token"] = token } } }) .. "\n")
  assert(init.result, cjson.encode(init))
  s:write('{"jsonrpc":"2.0","method":"notifications/initialized"}\n')
  local id = 0
  while true do
    local before = loop.time()
    if before >= t_end then break end
    id = id + 1
    n_seq = n_seq + 1
    local to = ("+1415555%04d"):format(n_seq % 10000)
    local m = roundtrip(s, id, cjson.encode({ jsonrpc = "2.0", id = id, method = "tools/call",
      params = { name = "twilio_send_sms", arguments = { to = to, body = "bench " .. w .. " " .. id } } }) .. "\n")
    local after = loop.time()
    if m.error or not m.result or m.result.isError then
      errors = errors + 1
      if errors <= 3 then io.stderr:write("error: ", cjson.encode(m.error or m.result), "\n") end
    elseif before >= t_start and after <= t_end then
      lat[#lat + 1] = (after - before) * 1000
    end
  end
  s:close()
  running = running - 1
  if running == 0 then loop.stop() end
end

loop.spawn(function()
  local now = loop.time()
  t_start, t_end = now + 1, now + 1 + seconds
  for w = 1, conns do loop.spawn(worker, w) end
  loop.sleep(t_start - loop.time())
  cpu0 = cpu()
  loop.sleep(t_end - loop.time())
  cpu1 = cpu()
end)
loop.run()
table.sort(lat)
local function pct(p) return lat[math.max(1, math.ceil(p * #lat))] or 0 end
print(("sends C=%d: %.0f calls/s, p50 %.2f ms, p99 %.2f ms, server CPU %s us/call, %d errors"):format(conns,
  #lat / seconds, pct(0.5), pct(0.99), cpu0 and cpu1 and #lat > 0 and ("%.0f"):format((cpu1 - cpu0) * 1e6 / #lat)
  or "-", errors))
