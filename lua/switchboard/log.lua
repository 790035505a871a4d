-- Leveled logging to a file or standard error, one line per event: text
-- ("TIME level message") or, with format = "json", one JSON object a line
-- ({"time","level","msg"}). log.reopen() opens the file again at its path
-- (SIGHUP, after logrotate moved it).
-- Callers never pass secrets: the vault keeps them out of Lua altogether.
local fs = require("core.fs")
local printable = require("switchboard.printable").escape
local cjson = require("cjson")
local time = require("switchboard.time")

local M = {}

local levels = { debug = 1, info = 2, warn = 3, error = 4 }
local threshold = levels.info
local out = io.stderr
local path
local as_json = false
local codec = cjson.new()

function M.levels() return levels end

local function open(p)
  -- a new log file is for the server's user only (0600)
  local old = fs.umask(tonumber("077", 8))
  local f, err = io.open(p, "a")
  fs.umask(old)
  if not f then return nil, "log.file: " .. err end
  f:setvbuf("line")
  return f
end

-- opts: { level = "info", file = path or nil, format = "text"|"json" }.
-- Returns true or nil, err.
function M.setup(opts)
  opts = opts or {}
  local lvl = levels[opts.level or "info"]
  if not lvl then return nil, "log.level must be one of debug, info, warn, error" end
  local fmt = opts.format or "text"
  if fmt ~= "text" and fmt ~= "json" then return nil, "log.format must be text or json" end
  threshold = lvl
  as_json = fmt == "json"
  if opts.file then
    local f, err = open(opts.file)
    if not f then return nil, err end
    if out ~= io.stderr then out:close() end
    out, path = f, opts.file
  end
  return true
end

-- Open log.file again (the old file may have been renamed away). true, or
-- nil, err with the old file kept.
function M.reopen()
  if not path then return true end
  local f, err = open(path)
  if not f then return nil, err end
  if out ~= io.stderr then out:close() end
  out = f
  return true
end

local function write(level, msg)
  local now = time.now()
  if as_json then
    -- invalid UTF-8 would make the line unreadable as JSON: bytes kept as
    -- \u00XX escapes of their Latin-1 reading
    if not utf8.len(msg) then
      msg = msg:gsub("[\128-\255]", function(c) return utf8.char(c:byte()) end)
    end
    local ok, line = pcall(codec.encode, { time = now, level = level, msg = msg })
    out:write(ok and line or '{"level":"error","msg":"log line could not be encoded"}', "\n")
  else
    -- what came from outside (an id an agent chose) never reaches a
    -- terminal showing the log raw; an error's traceback keeps its lines
    out:write(now, " ", level, " ", (msg:gsub("[^\n\t]+", printable)), "\n")
  end
end

local function emit(level, fmt, ...)
  if levels[level] < threshold then return end
  local ok, msg = pcall(string.format, fmt, ...)
  if not ok then msg = fmt end
  write(level, (msg:gsub("[\r\n]+", " | ")))
end

function M.debug(...) emit("debug", ...) end
function M.info(...) emit("info", ...) end
function M.warn(...) emit("warn", ...) end
-- Errors keep their traceback lines readable in the text file (JSON keeps
-- them inside the one string).
function M.error(fmt, ...)
  if levels.error < threshold then return end
  local ok, msg = pcall(string.format, fmt, ...)
  if not ok then msg = fmt end
  write("error", msg)
end

function M.enabled(level) return levels[level] >= threshold end

return M
