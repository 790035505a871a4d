-- JSON through lua-cjson, plus what cjson 2.1 lacks: an empty array.
-- json.array(t) returns t when it has items, else a marker that encodes as [].
local cjson = require("cjson")

local M = {}

local codec = cjson.new()
codec.encode_sparse_array(false)
codec.decode_max_depth(64)
codec.encode_max_depth(64)
codec.decode_invalid_numbers(false)

M.null = cjson.null

-- A marker no client can guess: random per process.
local marker do
  local ok, vault = pcall(require, "core.vault")
  local salt = ok and vault.hex and vault.hex(vault.random(8))
    or tostring(os.time()) .. tostring({}):sub(8)
  marker = "\1sb-empty-array-" .. salt
end
local quoted_marker = '"' .. marker:gsub("\1", "\\u0001") .. '"'

function M.array(t)
  if t == nil or next(t) == nil then return marker end
  return t
end

-- Encode v; raises on values JSON cannot hold (misuse).
function M.encode(v)
  local s = codec.encode(v)
  if s:find(quoted_marker, 1, true) then
    s = s:gsub(quoted_marker:gsub("%p", "%%%0"), "[]")
  end
  return s
end

-- Decode s; returns value or nil, err.
function M.decode(s)
  local ok, v = pcall(codec.decode, s)
  if not ok then return nil, (tostring(v):gsub("^.-:%d+: ", "")) end
  return v
end

return M
