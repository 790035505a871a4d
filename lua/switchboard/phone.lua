-- core.phone.parse (libphonenumber) with the last numbers kept: a send's
-- recipient is parsed by the argument check (format e164), again by the
-- recipients policy and by the untrusted-content guard, and the parse is
-- the dearest step of each. Every caller gets a table of its own (a
-- policy may not change what another sees).
local core = require("core.phone")

local M = {}

M.KEPT = 1024 -- numbers kept; the table starts again when full
local kept, n = {}, 0

-- phone.parse(s) -> { valid, possible, country_code, region, type, e164,
-- extension, reason } | nil, err (as core.phone.parse)
function M.parse(s)
  if type(s) ~= "string" or #s > 64 then return core.parse(s) end
  local e = kept[s]
  if not e then
    local p, err = core.parse(s)
    e = { p or false, err }
    if n >= M.KEPT then kept, n = {}, 0 end
    kept[s], n = e, n + 1
  end
  if not e[1] then return nil, e[2] end
  local copy = {}
  for k, v in pairs(e[1]) do copy[k] = v end
  return copy
end

return M
