-- `switchboard sim [--host 127.0.0.1] [--port N] [--fixture FILE]
-- [--port-file FILE]`: run the Twilio simulator until SIGTERM or SIGINT.
-- The runtime's command dispatch calls M.commands.sim(args, root).
local loop = require("core.loop")
local sim = require("integrations.twilio.sim")

local M = { commands = {} }

local USAGE = "usage: switchboard sim [--host 127.0.0.1] [--port N (0 = any)] [--fixture FILE] [--port-file FILE]\n"

local function parse(args)
  local opts = {}
  local i = 1
  while i <= #args do
    local a = args[i]
    local name, value = a:match("^%-%-([%w%-]+)=(.*)$")
    if not name then
      name = a:match("^%-%-([%w%-]+)$")
      if not name then return nil, "unexpected argument: " .. a end
      if name == "help" then return nil end
      i = i + 1
      value = args[i]
      if value == nil then return nil, ("option --%s needs a value"):format(name) end
    end
    if name ~= "host" and name ~= "port" and name ~= "fixture" and name ~= "port-file" then
      return nil, "unknown option --" .. name
    end
    opts[name] = value
    i = i + 1
  end
  if opts.port then
    local p = math.tointeger(tonumber(opts.port))
    if not p or p < 0 or p > 65535 then return nil, "--port must be a number from 0 to 65535" end
    opts.port = p
  end
  return opts
end

-- Write the port so that a reader never sees a partial file.
local function write_port_file(path, port)
  local tmp = path .. ".tmp"
  local f, err = io.open(tmp, "w")
  if not f then return nil, err end
  f:write(tostring(port), "\n")
  f:close()
  local ok, rerr = os.rename(tmp, path)
  if not ok then return nil, rerr end
  return true
end

function M.commands.sim(args, root)
  local opts, err = parse(args or {})
  if not opts then
    if err then io.stderr:write("switchboard sim: ", err, "\n") end
    io.stderr:write(USAGE)
    return err and 2 or 0
  end
  loop.set_error_handler(function(msg) io.stderr:write("switchboard sim: ", msg, "\n") end)
  local s, serr = sim.start{
    host = opts.host or "127.0.0.1",
    port = opts.port or 0,
    fixture = opts.fixture or sim.default_fixture(root),
  }
  if not s then
    io.stderr:write("switchboard sim: ", tostring(serr), "\n")
    return 1
  end
  if opts["port-file"] then
    local ok, perr = write_port_file(opts["port-file"], s.port)
    if not ok then
      io.stderr:write("switchboard sim: cannot write the port file: ", tostring(perr), "\n")
      s:close()
      return 1
    end
  end
  io.stdout:write("switchboard sim listening on ", s.url, "\n")
  io.stdout:flush()
  local signals = {}
  local function stop(name)
    io.stderr:write("switchboard sim: ", name, " received, stopping\n")
    s:close()
    for _, h in ipairs(signals) do h:close() end
    loop.stop()
  end
  signals[1] = loop.signal("TERM", stop)
  signals[2] = loop.signal("INT", stop)
  loop.run()
  s:close()
  return 0
end

return M
