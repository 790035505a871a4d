-- The runtime's own cost per call, without sockets or upstreams: a real
-- server state (store, vault, registry, policies, audit) in this process,
-- one MCP session on a stream that discards output, N tools/call of
-- example_clock through handle_line. Prints "hotpath <handling µs> <with audit µs>".
local loop = require("core.loop")
local json = require("switchboard.json")
local config = require("switchboard.config")
local server = require("switchboard.server")
local mcp = require("switchboard.mcp")
local directory = require("switchboard.directory")

local root, dir, n = arg[1], arg[2], tonumber(arg[3]) or 20000
collectgarbage("generational")
local cfg = assert(config.build({ data_dir = dir, agent_socket = dir .. "/hp-agent.sock",
  admin_socket = dir .. "/hp-admin.sock", master_key_file = dir .. "/hp-master.key",
  database = dir .. "/hp.db", tool_dirs = { root .. "/examples/tools" }, log = { level = "error" } }, root))

loop.spawn(function()
  local srv = assert(server.start(cfg))
  local t = assert(directory.add_tenant(srv.db, srv.master, "hotpath"))
  local _, token = directory.add_agent(srv.db, t, { name = "a", type = "caioo", groups = { "Examples" },
                                                     default_tier = "owner" })
  local stream = { write = function() return true end, close = function() end }
  local s = mcp.new(srv, stream, 1)
  srv.sessions[s] = true
  s:handle_line(json.encode({ jsonrpc = "2.0", id = 0, method = "initialize",
    params = { protocolVersion = "2025-11-25", capabilities = {}, clientInfo = { name = "bench", version = "1" },
               _meta = { ["io.switchboard/token"] = token } } }))
  local line = '{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"example_clock","arguments":{}}}'
  for _ = 1, 1000 do s:handle_line(line) end
  srv.audit:flush()
  local c0 = os.clock()
  for _ = 1, n do s:handle_line(line) end
  local c1 = os.clock()
  srv.audit:flush()
  local c2 = os.clock()
  print(("hotpath %.1f %.1f"):format((c1 - c0) / n * 1e6, (c2 - c0) / n * 1e6))
  for _, l in ipairs(srv.listeners) do l:close() end
  for _, sg in ipairs(srv.signals) do sg:close() end
  loop.stop()
end)
loop.run()
