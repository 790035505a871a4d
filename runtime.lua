-- runtime.lua: the entry point. core/main.c calls it with the project root
-- and the command-line arguments: switchboard serve | admin | connect | sim | version
local root = ...
local argv = table.pack(select(2, ...))

local commands = {}

function commands.version()
  io.stdout:write("switchboard 0.1.0 (", _VERSION, ")\n")
  return 0
end

-- Runs a Lua file with the core modules available (tests, benches, busted).
function commands.exec(args)
  local file = args[1]
  if not file then
    io.stderr:write("usage: switchboard exec FILE [ARGS...]\n")
    return 2
  end
  local script_arg = { [0] = file }
  for i = 2, #args do script_arg[i - 1] = args[i] end
  _G.arg = script_arg -- luacheck: ignore 122
  local chunk, err = loadfile(file)
  if not chunk then
    io.stderr:write(err, "\n")
    return 1
  end
  local rc = chunk(table.unpack(script_arg))
  return math.type(rc) == "integer" and rc or 0
end

local function main()
  local cmd = argv[1] or "help"
  local rest = { table.unpack(argv, 2, argv.n) }
  local fn = commands[cmd]
  if not fn then
    local ok, mod = pcall(require, "switchboard.cli")
    if ok and mod.commands[cmd] then
      return mod.commands[cmd](rest, root)
    end
    io.stderr:write("usage: switchboard serve|admin|connect|sim|version [--config FILE]\n")
    return cmd == "help" and 0 or 2
  end
  return fn(rest, root)
end

return main()
