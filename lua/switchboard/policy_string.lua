-- The string library policies see, with a step budget on matching.
--
-- Lua's matcher (string.find, match, gmatch, gsub) runs inside one C call,
-- where the instruction hook that bounds a policy never fires: a pattern
-- like ".-.-.-.-b" on a few thousand bytes backtracks for minutes. So each
-- call first bounds the work the matcher can do: the pattern is read into
-- its items, and an upper bound on the matching steps is computed for the
-- subject's length (a polynomial: each repetition that can give back
-- characters to what follows multiplies by the length; one that cannot,
-- because what follows starts with a character it does not match, only
-- adds). The bound is charged against the check's budget (M.reset); a call
-- that would exceed it raises an error naming the pattern and the limit,
-- and the policy fails, which denies the call. Nothing is split or cut: a
-- subject is matched whole or not at all.
--
--   M.lib          the string table for the sandbox (find/match/gmatch/gsub
--                  bounded, the rest as they are)
--   M.reset(steps) start a check with this many matching steps
--   M.cost(how, subject_length, pattern, plain) -> steps (or nil, err)
local M = {}

local byte, char, find, sub, format = string.byte, string.char, string.find, string.sub, string.format
local tostring, type = tostring, type

-- What makes string.find use the matcher rather than a plain search.
local SPECIALS = "[%^%$%*%+%?%.%(%[%%%-]"

---------------------------------------------------------------------------
-- byte sets: four 64-bit words

local ALL = { -1, -1, -1, -1 }
local EMPTY = { 0, 0, 0, 0 }

local function union(a, b) return { a[1] | b[1], a[2] | b[2], a[3] | b[3], a[4] | b[4] } end
local function disjoint(a, b)
  return a[1] & b[1] == 0 and a[2] & b[2] == 0 and a[3] & b[3] == 0 and a[4] & b[4] == 0
end

-- The bytes one single-character class matches, asked of the matcher itself
-- (so locale classes and set syntax mean what they mean to it). Long sets
-- count as every byte: that only makes the bound larger.
local CHARS = {}
for b = 0, 255 do CHARS[b] = char(b) end
local set_cache, set_cached = {}, 0
local function class_set(text)
  if text == "." or #text > 64 then return ALL end
  local s = set_cache[text]
  if s then return s end
  s = { 0, 0, 0, 0 }
  local anchored = text == "$" and "^%$" or "^" .. text -- a '$' inside a pattern is a character
  for b = 0, 255 do
    if find(CHARS[b], anchored) then
      local w = (b >> 6) + 1
      s[w] = s[w] | (1 << (b & 63))
    end
  end
  if set_cached >= 512 then set_cache, set_cached = {}, 0 end
  set_cache[text], set_cached = s, set_cached + 1
  return s
end

---------------------------------------------------------------------------
-- reading a pattern into items (Lua manual §6.4.1)

-- The index just after the single-character class starting at i, or nil
-- for a malformed one.
local function class_end(p, i, n)
  local c = byte(p, i)
  if c == 37 then -- %x
    if i >= n then return nil, "ends with '%'" end
    return i + 2
  elseif c == 91 then -- [set]: a ']' first in the set is a member
    local j = i + 1
    if byte(p, j) == 94 then j = j + 1 end
    while true do
      if j > n then return nil, "missing ']'" end
      local cj = byte(p, j)
      j = j + 1
      if cj == 37 then
        if j > n then return nil, "missing ']'" end
        j = j + 1
      end
      if byte(p, j) == 93 then return j + 1 end
    end
  end
  return i + 1
end

local QUANT = { [42] = "*", [43] = "+", [45] = "-", [63] = "?" }

-- The items of p: { kind = "single"|"cap"|"dollar"|"balance"|"frontier"|
-- "backref", len = pattern bytes, set = bytes (single, balance), quant }.
-- gmatch reads a leading '^' as a character, the others as an anchor.
local function parse(p, how)
  local n, items, i, anchored = #p, {}, 1, false
  if how ~= "gmatch" and byte(p, 1) == 94 then anchored, i = true, 2 end
  while i <= n do
    local c, c2 = byte(p, i), byte(p, i + 1)
    if c == 40 or c == 41 then -- ( ) or ()
      local w = (c == 40 and c2 == 41) and 2 or 1
      items[#items + 1] = { kind = "cap", len = w }
      i = i + w
    elseif c == 36 and i == n then
      items[#items + 1] = { kind = "dollar", len = 1 }
      i = i + 1
    elseif c == 37 and c2 == 98 then -- %bxy
      if i + 3 > n then return nil, "missing arguments to '%b'" end
      local open = byte(p, i + 2)
      local s = { 0, 0, 0, 0 }
      s[(open >> 6) + 1] = 1 << (open & 63)
      items[#items + 1] = { kind = "balance", len = 4, set = s }
      i = i + 4
    elseif c == 37 and c2 == 102 then -- %f[set]
      if byte(p, i + 2) ~= 91 then return nil, "missing '[' after '%f' in pattern" end
      local e, err = class_end(p, i + 2, n)
      if not e then return nil, err end
      items[#items + 1] = { kind = "frontier", len = e - i }
      i = e
    elseif c == 37 and c2 and c2 >= 48 and c2 <= 57 then -- %1 .. %9
      items[#items + 1] = { kind = "backref", len = 2 }
      i = i + 2
    else
      local e, err = class_end(p, i, n)
      if not e then return nil, err end
      local q = QUANT[byte(p, e) or 0]
      items[#items + 1] = { kind = "single", len = e - i, set = class_set(sub(p, i, e - 1)), quant = q }
      i = q and e + 1 or e
    end
  end
  return items, anchored
end

---------------------------------------------------------------------------
-- the bound: a polynomial in N (the subject's length + 1), coefficients
-- c[1] + c[2] N + c[3] N^2 + …

local function add(p, degree, k)
  local q = {}
  for j = 1, math.max(#p, degree + 1) do q[j] = (p[j] or 0) end
  q[degree + 1] = q[degree + 1] + k
  return q
end

local function scale(p, k)
  local q = {}
  for j = 1, #p do q[j] = p[j] * k end
  return q
end

-- The sum of p(i) over the subject positions a repetition can stop at:
-- sum_{i<N} i^j <= N^(j+1)/(j+1).
local function sum(p)
  local q = { 0 }
  for j = 1, #p do q[j + 1] = p[j] / j end
  return q
end

local function at(p, n)
  local v, x = 0, 1
  for j = 1, #p do
    v = v + p[j] * x
    x = x * n
  end
  return v
end

-- The bound for matching items from the start (for one starting point),
-- read from the end: F is the set of bytes the rest can begin with (ALL
-- when a frontier or back reference makes it unknown), f the cost of the
-- rest failing on its first byte, sure whether the rest matches wherever it
-- is tried (only optional repetitions and captures are left, or a ".-" or
-- ".*" that can reach an end the rest matches at), at_end whether it
-- matches at the end of the subject.
local function bound(items)
  local P, F, f, sure, at_end = { 1 }, EMPTY, 1, true, true
  for k = #items, 1, -1 do
    local it = items[k]
    local len, kind, q = it.len, it.kind, it.quant
    if kind == "cap" then
      P, f = add(P, 0, 1), f + 1
    elseif kind == "dollar" then
      P, F, f = { 1 }, EMPTY, 1
    elseif kind == "frontier" then
      P, F, f = add(P, 0, len), ALL, len
    elseif kind == "backref" then
      P, F, f = add(P, 1, 1), ALL, len
    elseif kind == "balance" then
      P, F, f = add(P, 1, 1), it.set, len
    elseif not q then
      P, F, f = add(P, 0, len), it.set, len
    else
      -- what follows is tried at one place only when it cannot fail, or
      -- when it cannot start with a byte this repetition takes
      local apart = sure or disjoint(it.set, F)
      if q == "?" then
        P = apart and add(P, 0, len + f) or add(scale(P, 2), 0, len)
      elseif apart then
        P = add(P, 1, len + f + 1)
      elseif q == "-" then
        P = sum(add(P, 0, len + 1))
      else
        P = add(sum(P), 1, len + 1)
      end
      if q == "+" then F, f = it.set, len else F, f = union(it.set, F), len + f end
    end
    if kind == "dollar" then
      sure, at_end = false, true
    elseif kind == "single" and q and q ~= "+" then
      sure = sure or (at_end and q ~= "?" and it.set == ALL)
    elseif kind ~= "cap" then
      sure, at_end = false, false
    end
  end
  return P
end

-- Whether every try of the pattern fails on one of its first fixed
-- characters or matches: fixed single characters (and captures), at most
-- one "x+", then only optional repetitions and captures ("%S+", "key=(%w*)").
-- Such a pattern costs each starting point little, and a match ends the
-- search or moves past what it took.
local function simple(items)
  local k, n = 1, #items
  while k <= n and (items[k].kind == "cap" or (items[k].kind == "single" and not items[k].quant)) do
    k = k + 1
  end
  if k <= n and items[k].kind == "single" and items[k].quant == "+" then k = k + 1 end
  for j = k, n do
    local it = items[j]
    if not (it.kind == "cap" or (it.kind == "single" and it.quant and it.quant ~= "+")) then return false end
  end
  return true
end

-- Analyses by pattern, kept for the patterns a policy uses again.
local poly_cache, poly_cached = {}, 0

-- An upper bound on the matching steps of string[how](s, p) for #s == n.
-- Returns steps, or nil and the reason the pattern is malformed.
function M.cost(how, n, p, plain)
  local N = n + 1
  if how == "find" and (plain or not find(p, SPECIALS)) then
    return N + N * #p / 64 -- a plain search: memchr and memcmp
  end
  local key = how == "gmatch" and "g" .. p or "f" .. p
  local poly = poly_cache[key]
  if not poly then
    local items, anchored = parse(p, how)
    if not items then return nil, anchored end
    poly = bound(items)
    if not anchored then -- each starting point
      if simple(items) then
        local total = 2
        for _, it in ipairs(items) do total = total + it.len end
        poly = { 1, total }
      else
        poly = add(sum(poly), 1, 1)
      end
    end
    if how == "gsub" then poly = add(poly, 1, 1) end    -- the replacements
    if #p <= 256 then
      if poly_cached >= 256 then poly_cache, poly_cached = {}, 0 end
      poly_cache[key], poly_cached = poly, poly_cached + 1
    end
  end
  return at(poly, N)
end

---------------------------------------------------------------------------
-- the budget and the wrappers

local budget, left = 0, 0

-- Start a check that may spend `steps` matching steps in all.
function M.reset(steps)
  budget, left = steps, steps
end

local function shown(p)
  if #p > 40 then return format("%q…", sub(p, 1, 40)) end
  return format("%q", p)
end

local function charge(name, s, p, plain)
  local ts, tp = type(s), type(p)
  if (ts ~= "string" and ts ~= "number") or (tp ~= "string" and tp ~= "number") then
    return -- the library raises its own error
  end
  s, p = tostring(s), tostring(p)
  local steps, err = M.cost(name, #s, p, plain)
  if not steps then error(format("string.%s: malformed pattern %s (%s)", name, shown(p), err), 3) end
  if steps > left then
    local limit = steps > budget and ("the %d a policy check may spend"):format(budget)
      or ("the %d left of the %d a policy check may spend"):format(left, budget)
    error(format("string.%s: the pattern %s on %d bytes could take %.3g matching steps, more than"
      .. " %s; anchor it with '^', search plain text (find(s, text, 1, true)), or make its"
      .. " repetitions unable to overlap", name, shown(p), #s, steps, limit), 3)
  end
  left = left - steps
end

local lib = {}
for _, name in ipairs({ "byte", "char", "format", "len", "lower", "rep", "reverse", "sub", "upper" }) do
  lib[name] = string[name]
end
local gmatch, gsub, match = string.gmatch, string.gsub, string.match

function lib.find(s, p, init, plain)
  charge("find", s, p, plain)
  return find(s, p, init, plain)
end

function lib.match(s, p, init)
  charge("match", s, p)
  return match(s, p, init)
end

function lib.gmatch(s, p, init)
  charge("gmatch", s, p)
  return gmatch(s, p, init)
end

function lib.gsub(s, p, repl, n)
  charge("gsub", s, p)
  return gsub(s, p, repl, n)
end

M.lib = lib

return M
