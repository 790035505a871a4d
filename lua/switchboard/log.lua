-- Leveled logging to a file or standard error, one line per event.
-- Callers never pass secrets: the vault keeps them out of Lua altogether.
local fs = require("core.fs")
local printable = require("switchboard.printable").escape

local M = {}

local levels = { debug = 1, info = 2, warn = 3, error = 4 }
local threshold = levels.info
local out = io.stderr

function M.levels() return levels end

-- opts: { level = "info", file = path or nil }. Returns true or nil, err.
function M.setup(opts)
  opts = opts or {}
  local lvl = levels[opts.level or "info"]
  if not lvl then return nil, "log.level must be one of debug, info, warn, error" end
  threshold = lvl
  if opts.file then
    -- a new log file is for the server's user only (0600)
    local old = fs.umask(tonumber("077", 8))
    local f, err = io.open(opts.file, "a")
    fs.umask(old)
    if not f then return nil, "log.file: " .. err end
    f:setvbuf("line")
    if out ~= io.stderr then out:close() end
    out = f
  end
  return true
end

local function emit(level, fmt, ...)
  if levels[level] < threshold then return end
  local ok, msg = pcall(string.format, fmt, ...)
  if not ok then msg = fmt end
  -- one line per event, and what came from outside (an id an agent chose)
  -- never reaches a terminal showing the log raw
  msg = printable((msg:gsub("[\r\n]+", " | ")))
  out:write(os.date("!%Y-%m-%dT%H:%M:%SZ"), " ", level, " ", msg, "\n")
end

function M.debug(...) emit("debug", ...) end
function M.info(...) emit("info", ...) end
function M.warn(...) emit("warn", ...) end
-- Errors keep their traceback lines (newlines, tabs) readable in the file.
function M.error(fmt, ...)
  if levels.error < threshold then return end
  local ok, msg = pcall(string.format, fmt, ...)
  if not ok then msg = fmt end
  out:write(os.date("!%Y-%m-%dT%H:%M:%SZ"), " error ", (msg:gsub("[^\n\t]+", printable)), "\n")
end

function M.enabled(level) return levels[level] >= threshold end

return M
