-- application/x-www-form-urlencoded bodies (status callbacks, the
-- simulators): decoded into params (a single value as a string, a repeated
-- key as an array of strings) and the ordered list of { key, value } pairs.
local char, tonumber = string.char, tonumber

local M = {}

function M.unescape(s, form)
  if form then s = s:gsub("%+", " ") end
  return (s:gsub("%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

function M.parse(s)
  local params, pairs_ = {}, {}
  if not s or s == "" then return params, pairs_ end
  for part in s:gmatch("[^&]+") do
    local k, v = part:match("^([^=]*)=(.*)$")
    if not k then k, v = part, "" end
    k, v = M.unescape(k, true), M.unescape(v, true)
    pairs_[#pairs_ + 1] = { k, v }
    local old = params[k]
    if old == nil then
      params[k] = v
    elseif type(old) == "table" then
      old[#old + 1] = v
    else
      params[k] = { old, v }
    end
  end
  return params, pairs_
end

return M
