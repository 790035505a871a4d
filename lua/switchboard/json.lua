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

-- lua-cjson 2.1 reads every number as a float (it has no decode option
-- for integers), so 5 would become 5.0 and be written back as "5.0". A
-- number with no fraction within ±2^53 (where floats are exact) becomes a
-- Lua integer; others stay floats. The walk over the decoded tree is in C
-- (core.jsonint): in Lua it was most of the instructions of a small call.
local integers = require("core.jsonint").integers

-- s with every byte that is not part of valid UTF-8 replaced by U+FFFD
-- (s itself when it is valid): for text from outside that JSON requires to
-- be UTF-8 but that may not be.
local utf8_len = utf8.len
function M.utf8_repair(s)
  local n, bad = utf8_len(s)
  if n then return s end
  local out, from = {}, 1
  while bad do
    out[#out + 1] = s:sub(from, bad - 1)
    out[#out + 1] = "\u{FFFD}"
    from = bad + 1
    n, bad = utf8_len(s, from)
    if n then break end
  end
  out[#out + 1] = s:sub(from)
  return table.concat(out)
end

-- Decode s; returns value or nil, err.
function M.decode(s)
  local ok, v = pcall(codec.decode, s)
  if not ok then return nil, (tostring(v):gsub("^.-:%d+: ", "")) end
  return integers(v)
end

return M
