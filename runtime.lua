-- runtime.lua: the entry point. core/main.c calls it with the project root
-- and the command-line arguments (argv[1..]); lua/switchboard/cli.lua
-- parses them: switchboard serve | admin | connect | sim | exec | version
local root = ...
local argv = table.pack(select(2, ...))

return require("switchboard.cli").main(table.move(argv, 1, argv.n, 1, {}), root)
