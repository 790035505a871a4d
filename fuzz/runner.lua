-- Runs a fuzz target over one input and says whether it held. A target
-- (fuzz/targets/<name>.lua) returns function(bytes); it raises
-- runner.reject(msg) for an input it declares invalid (an expected
-- outcome), and any other error is a failure: a broken invariant
-- (assert) or a Lua error nobody expected. The libFuzzer harness
-- (fuzz/harness.c) and the corpus replay (fuzz/replay.lua) share this.
local M = {}

local Expected = {}
Expected.__index = Expected
Expected.__tostring = function(e) return "expected: " .. tostring(e.message) end

-- Raise an error the target declares expected for this input.
function M.reject(msg)
  error(setmetatable({ message = msg }, Expected), 0)
end

function M.is_expected(e)
  return getmetatable(e) == Expected
end

local function handler(e)
  if M.is_expected(e) then return e end
  return debug.traceback(tostring(e), 2)
end

-- The check function of target `name` (<dir>/targets/<name>.lua; dir is
-- $SB_FUZZ_DIR or root/fuzz by default): check(bytes) -> true, or false and
-- what failed. The target's chunk receives root (the project root).
function M.load(name, root, dir)
  root = root or os.getenv("SWITCHBOARD_HOME") or "."
  dir = dir or os.getenv("SB_FUZZ_DIR") or (root .. "/fuzz")
  local path = ("%s/targets/%s.lua"):format(dir, name)
  local chunk = assert(loadfile(path))
  local target = chunk(root)
  assert(type(target) == "function", path .. " must return function(bytes)")
  return function(bytes)
    local ok, err = xpcall(target, handler, bytes)
    if ok or M.is_expected(err) then return true end
    return false, ("target %s: %s"):format(name, tostring(err))
  end
end

-- Invariant helpers for the targets.

-- Valid UTF-8 (RFC 3629: no overlong forms, no surrogates, at most U+10FFFF).
function M.utf8_ok(s)
  return utf8.len(s) ~= nil
end

-- Collect log.error calls: an internal error the code logged is a finding
-- even when it was caught and answered politely. Returns a function that
-- returns and clears what was logged since the last call.
function M.capture_log()
  local log = require("switchboard.log")
  local errors = {}
  log.error = function(fmt, ...)
    local ok, msg = pcall(string.format, fmt, ...)
    errors[#errors + 1] = ok and msg or tostring(fmt)
  end
  log.warn = function() end
  log.info = function() end
  log.debug = function() end
  return function()
    local out = errors
    errors = {}
    return out
  end
end

return M
