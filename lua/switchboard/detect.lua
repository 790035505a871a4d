-- Detectors for personal data and secrets in outbound text. Pure Lua.
--
--   detect.normalize(text)  -> the text with invisible characters removed and
--                              look-alike digits, spaces and dashes folded
--   detect.scan(text)       -> { { category =, kind =, start =, stop = }, … }
--   detect.categories(text) -> { card = true, email = true, … }
--   detect.luhn(digits), detect.iban_valid(compact), detect.ssn_valid(digits)
--
-- Categories: card, iban, ssn, email, phone, secret. Findings point into
-- the normalized text and never carry the matched value: callers must not
-- echo what was found. The scanning is done by string.find in C; digit runs
-- are walked by hand (Lua patterns have no alternation or {m,n}), so the
-- cost stays close to linear in the input.
local M = {}

local byte, char, find, sub, gsub, lower, rep =
  string.byte, string.char, string.find, string.sub, string.gsub, string.lower, string.rep

---------------------------------------------------------------------------
-- normalization

local FOLD = {}
local function fold(cp, to) FOLD[utf8.char(cp)] = to end
local function fold_range(a, b, to) for cp = a, b do fold(cp, to) end end

-- invisible: zero-width space/joiners and direction marks, bidi embeddings
-- and isolates, word joiner and invisible operators, BOM, soft hyphen,
-- Mongolian vowel separator, combining grapheme joiner
fold_range(0x200B, 0x200F, ""); fold_range(0x202A, 0x202E, "")
fold_range(0x2060, 0x2064, ""); fold_range(0x2066, 0x2069, "")
fold(0xFEFF, ""); fold(0x00AD, ""); fold(0x180E, ""); fold(0x034F, "")
-- odd spaces
fold(0x00A0, " "); fold_range(0x2000, 0x200A, " "); fold(0x202F, " "); fold(0x205F, " ")
fold(0x3000, " "); fold(0x1680, " ")
-- dashes and minus signs
fold_range(0x2010, 0x2015, "-"); fold(0x2212, "-"); fold(0xFE58, "-"); fold(0xFE63, "-")
-- full-width ASCII (digits, letters, punctuation)
for cp = 0xFF01, 0xFF5E do fold(cp, char(cp - 0xFEE0)) end
-- decimal digits of other scripts (the code point of each script's zero)
for _, zero in ipairs({ 0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6,
                        0x0C66, 0x0CE6, 0x0D66, 0x0DE6, 0x0E50, 0x0ED0, 0x0F20, 0x1040, 0x1090,
                        0x17E0, 0x1810, 0x1946, 0x19D0, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xAA50,
                        0xABF0, 0x104A0, 0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6 }) do
  for i = 0, 9 do fold(zero + i, char(48 + i)) end
end

function M.normalize(text)
  if type(text) ~= "string" then error("detect.normalize: expected a string", 2) end
  if not find(text, "[\128-\255]") then return text end
  return (gsub(text, "[\194-\244][\128-\191]+", FOLD))
end

---------------------------------------------------------------------------
-- checksums and format rules

local DOUBLE = { [0] = 0, 2, 4, 6, 8, 1, 3, 5, 7, 9 } -- Luhn: 2d, minus 9 above 9

-- Luhn over a string of digits.
function M.luhn(digits)
  local sum, n = 0, #digits
  for i = n, 1, -1 do
    local d = byte(digits, i) - 48
    if (n - i) % 2 == 1 then d = DOUBLE[d] end
    sum = sum + d
  end
  return n > 0 and sum % 10 == 0
end

-- Lengths of the IBAN registry's countries.
local IBAN_LENGTH = {
  AD = 24, AE = 23, AL = 28, AT = 20, AZ = 28, BA = 20, BE = 16, BG = 22, BH = 22, BI = 27,
  BR = 29, BY = 28, CH = 21, CR = 22, CY = 28, CZ = 24, DE = 22, DJ = 27, DK = 18, DO = 28,
  EE = 20, EG = 29, ES = 24, FI = 18, FK = 18, FO = 18, FR = 27, GB = 22, GE = 22, GI = 23,
  GL = 18, GR = 27, GT = 28, HR = 21, HU = 28, IE = 22, IL = 23, IQ = 23, IS = 26, IT = 27,
  JO = 30, KW = 30, KZ = 20, LB = 28, LC = 32, LI = 21, LT = 20, LU = 20, LV = 21, LY = 25,
  MC = 27, MD = 24, ME = 22, MK = 19, MN = 20, MR = 27, MT = 31, MU = 30, NI = 28, NL = 18,
  NO = 15, OM = 23, PK = 24, PL = 28, PS = 29, PT = 25, QA = 29, RO = 24, RS = 22, RU = 33,
  SA = 24, SC = 31, SD = 18, SE = 24, SI = 19, SK = 24, SM = 27, SO = 23, ST = 25, SV = 28,
  TL = 23, TN = 24, TR = 26, UA = 29, VA = 22, VG = 24, XK = 20, YE = 30,
}
-- The remainder mod 97 of r followed by the digits of s[i..j], where a
-- letter stands for two digits (A = 10 … Z = 35).
local function mod97(s, i, j, r)
  for k = i, j do
    local b = byte(s, k)
    if b >= 65 then r = (r * 100 + b - 55) % 97 else r = (r * 10 + b - 48) % 97 end
  end
  return r
end

-- An IBAN without spaces, upper case: the country's length (when the
-- country is known) and mod-97 == 1 (the first four characters moved to
-- the end).
function M.iban_valid(s)
  local n = #s
  if n < 15 or n > 34 or not find(s, "^%u%u%d%d[%u%d]+$") then return false end
  local want = IBAN_LENGTH[sub(s, 1, 2)]
  if want and want ~= n then return false end
  return mod97(s, 1, 4, mod97(s, 5, n, 0)) == 1
end

-- Nine digits of a US SSN: the format rules (there is no checksum).
function M.ssn_valid(d)
  if #d ~= 9 or find(d, "%D") then return false end
  local area, group, serial = sub(d, 1, 3), sub(d, 4, 5), sub(d, 6, 9)
  if area == "000" or area == "666" or byte(area, 1) == 57 then return false end -- 9xx
  if group == "00" or serial == "0000" then return false end
  if d == rep(sub(d, 1, 1), 9) or d == "123456789" or d == "078051120" then return false end
  return true
end

-- The card network from the leading digits and the length (nil: not a
-- payment card number; only numbers starting with 1 to 6 are).
local function card_brand(d)
  local n = #d
  local p1, p2 = byte(d, 1) - 48, tonumber(sub(d, 1, 2))
  local p3, p4 = tonumber(sub(d, 1, 3)), tonumber(sub(d, 1, 4))
  local brand, fits
  if p1 == 4 then brand, fits = "visa", n == 13 or n == 16 or n == 19
  elseif p2 == 34 or p2 == 37 then brand, fits = "amex", n == 15
  elseif (p2 >= 51 and p2 <= 55) or (p4 >= 2221 and p4 <= 2720) then brand, fits = "mastercard", n == 16
  elseif p4 >= 2200 and p4 <= 2204 then brand, fits = "mir", n >= 16
  elseif p4 == 6011 or p2 == 65 or (p3 >= 644 and p3 <= 649) then brand, fits = "discover", n >= 16
  elseif p4 >= 3528 and p4 <= 3589 then brand, fits = "jcb", n >= 16
  elseif (p3 >= 300 and p3 <= 305) or p2 == 36 or p2 == 38 or p2 == 39 then brand, fits = "diners", n >= 14
  elseif p2 == 62 then brand, fits = "unionpay", n >= 16
  elseif p2 == 50 or (p2 >= 56 and p2 <= 69) then brand, fits = "maestro", true
  elseif p1 == 1 then brand, fits = "uatp", n == 15
  elseif p1 >= 2 and p1 <= 6 then brand, fits = "card", true
  end
  return fits and brand or nil
end

local function entropy(s)
  local counts, n = {}, #s
  for i = 1, n do
    local c = byte(s, i)
    counts[c] = (counts[c] or 0) + 1
  end
  local h = 0
  for _, k in pairs(counts) do
    local p = k / n
    h = h - p * math.log(p, 2)
  end
  return h
end

---------------------------------------------------------------------------
-- the scan

local ALPHA, ALNUM = {}, {}
for b = 65, 90 do ALPHA[b], ALNUM[b] = true, true end
for b = 97, 122 do ALPHA[b], ALNUM[b] = true, true end
for b = 48, 57 do ALNUM[b] = true end
local SEP = { [32] = true, [45] = true, [46] = true } -- space, dash, dot

local HEX32 = rep("%x", 32)
local WORD_HEX32 = "%f[%w]" .. HEX32 .. "%f[%W]"

-- Secrets found by one pattern each (a frontier on both sides keeps them
-- from matching inside longer words).
local SECRET_PATTERNS = {
  { kind = "api_key_sid", pattern = "%f[%w]SK" .. HEX32 .. "%f[%W]", entropy = 3 },
  { kind = "aws_access_key", pattern = "%f[%w]A[KS]IA" .. rep("[%u%d]", 16) .. "%f[%W]" },
  { kind = "github_token", pattern = "%f[%w]gh[pousr]_" .. rep("%w", 36) .. "%f[%W]" },
  { kind = "slack_token", pattern = "%f[%w]xox[baprs]%-%w+%-[%w%-]+", min = 24 },
  { kind = "stripe_secret_key", pattern = "%f[%w][sr]k_live_" .. rep("%w", 16) .. "%w*%f[%W]" },
  { kind = "google_api_key", pattern = "%f[%w]AIza" .. rep("[%w_%-]", 35) .. "%f[^%w_%-]" },
}
-- A PEM private key: "-----BEGIN … PRIVATE KEY-----" up to the matching
-- END line. Each marker's label is read up to the next "-----" and checked
-- on its own, so text full of markers or labels costs one pass.
local PEM_LABEL = "^[ %u%d]*PRIVATE KEY[ %u]*$"

-- The next marker ("-----BEGIN" or "-----END") at or after init whose
-- label names a private key: its start and the end of its closing dashes.
local function pem_marker(text, word, init)
  local open = "-----" .. word
  while true do
    local s = find(text, open, init, true)
    if not s then return nil end
    local from = s + #open
    local close = find(text, "-----", from, true)
    if not close then return nil end
    if close - from <= 64 and find(sub(text, from, close - 1), PEM_LABEL) then return s, close + 4 end
    init = from
  end
end
local JWT = "%f[%w_%-]eyJ[%w_%-]*%.[%w_%-]+%.[%w_%-]+"

local function add(out, category, kind, s, e)
  out[#out + 1] = { category = category, kind = kind, start = s, stop = e }
end

-- A secret named by its context, as secret scanners' generic rules find
-- one (gitleaks' generic-api-key): a keyword (any case, also inside
-- api_key, AUTH_TOKEN, clientSecret), at most 20 letters, digits, spaces or
-- "_.-" after it (" secret", " for the wifi"), then ":", "=", "=>" (quotes
-- around either side allowed) or " is "/" was ", then a token: 16 to 200
-- of letters, digits and "-_.=+/", with letters and digits both and a
-- Shannon entropy of at least 3.5 bits a character. Words ("my password is
-- in the drawer"), numbers and provider SIDs (identifiers, not secrets; an
-- Account SID next to its auth token is found above) are not tokens.
local function nocase(word)
  return (gsub(word, "%a", function(c) return "[" .. c .. c:upper() .. "]" end))
end
local KEYWORDS = {}
for _, w in ipairs({ "secret", "passw", "token", "auth", "credential", "bearer" }) do KEYWORDS[#KEYWORDS + 1] = nocase(w) end
for _, w in ipairs({ "api", "private", "access" }) do KEYWORDS[#KEYWORDS + 1] = nocase(w) .. "[ _%-]?" .. nocase("key") end
local ASSIGN = { "^[%w_%.%- ]-()[\"']?%s*[:=]+>?%s*[\"'`]?", "^[%w_%.%- ]-()%s+[iI][sS]%s+[\"'`]?",
                 "^[%w_%.%- ]-()%s+[wW][aA][sS]%s+[\"'`]?" }
local BEARER = "^(" .. nocase("bearer") .. ")%s+"
local TOKEN = "^[%w%-_%.=+/]+"
local SID = "^%u%u" .. rep("%x", 32) .. "$"

local function scan_assigned(text, out, claims)
  local seen = {}
  for _, kw in ipairs(KEYWORDS) do
    local init = 1
    while true do
      local ks, ke = find(text, kw, init)
      if not ks then break end
      init = ke + 1
      local after = sub(text, ke + 1, ke + 40)
      local best
      for _, a in ipairs(ASSIGN) do
        local _, e, fill = find(after, a)
        if e and fill <= 21 and (not best or e < best) then best = e end
      end
      if best then
        local ts = ke + best + 1
        local _, be = find(text, BEARER, ts)
        if be then ts = be + 1 end
        local window = sub(text, ts, ts + 200)
        local _, te = find(window, TOKEN)
        if te and te <= 200 then
          while te > 0 and byte(window, te) == 46 do te = te - 1 end -- a full stop ends a sentence
          local tok = sub(window, 1, te)
          if #tok >= 16 and not seen[ts] and find(tok, "%d") and find(tok, "%a") and not find(tok, SID)
             and entropy(tok) >= 3.5 then
            seen[ts] = true
            add(out, "secret", "assigned_secret", ts, ts + te - 1)
            claims[#claims + 1] = { ts, ts + te - 1, "h" }
          end
        end
      end
    end
  end
end

local function scan_secrets(text, out, claims)
  for _, p in ipairs(SECRET_PATTERNS) do
    local init = 1
    while true do
      local s, e = find(text, p.pattern, init)
      if not s then break end
      if (not p.entropy or entropy(sub(text, s + 2, e)) >= p.entropy)
         and (not p.min or e - s + 1 >= p.min) then
        add(out, "secret", p.kind, s, e)
        claims[#claims + 1] = { s, e, "h" }
      end
      init = e + 1
    end
  end
  -- An account SID (AC + 32 hex) is not secret on its own: it counts next to a
  -- 32-hex token or the words token/secret/auth (within 40 characters).
  local init = 1
  while true do
    local s, e = find(text, "%f[%w]AC" .. HEX32 .. "%f[%W]", init)
    if not s then break end
    local before = sub(text, s > 40 and s - 40 or 1, s - 1)
    local after = sub(text, e + 1, e + 40)
    local near = lower(before .. " " .. after)
    if find(before, WORD_HEX32) or find(after, WORD_HEX32) or find(near, "token", 1, true)
       or find(near, "secret", 1, true) or find(near, "auth", 1, true) then
      add(out, "secret", "account_credentials", s, e)
      claims[#claims + 1] = { s, e, "h" }
    end
    init = e + 1
  end
  init = 1
  local end_s, end_e = 0, 0 -- the first END marker after the last BEGIN looked at
  while true do
    local s, e = pem_marker(text, "BEGIN", init)
    if not s then break end
    if end_s and end_s <= e then end_s, end_e = pem_marker(text, "END", e + 1) end
    if end_s then e = end_e end
    add(out, "secret", "pem_private_key", s, e)
    claims[#claims + 1] = { s, e, "h" }
    init = e + 1
  end
  init = 1
  while true do
    local s, e = find(text, JWT, init)
    if not s then break end
    local d1 = find(text, ".", s, true)
    local d2 = find(text, ".", d1 + 1, true)
    if d1 - s >= 10 and d2 - d1 > 10 and e - d2 >= 10 then
      add(out, "secret", "jwt", s, e)
      claims[#claims + 1] = { s, e, "h" }
    end
    init = e + 1
  end
  scan_assigned(text, out, claims)
end

-- local@domain.tld: found from each '@' between a local-part character and
-- a letter or digit (never by a pattern that could backtrack over a long
-- word), the local part read backwards at most 64 characters.
local function scan_emails(text, out, claims)
  local init = 1
  while true do
    local p = find(text, "[%w%.%+%-_]@%w", init)
    if not p then break end
    local at = p + 1
    init = at + 1
    local from = at > 64 and at - 64 or 1
    local s = from + find(sub(text, from, at - 1), "[%w%.%+%-_]+$") - 1
    while byte(text, s) == 46 do s = s + 1 end -- no leading dot
    local _, de = find(text, "^[%w%-%.]+", at + 1)
    while de > at and (byte(text, de) == 46 or byte(text, de) == 45) do de = de - 1 end -- no trailing . or -
    local dom = sub(text, at + 1, de)
    local e = de
    if s < at and byte(text, at - 1) ~= 46 and not find(sub(text, s, at - 1), "..", 1, true)
       and find(dom, "%.%a%a+$") and not find(dom, "..", 1, true)
       and not find(dom, "%-%.") and not find(dom, "%.%-") then
      add(out, "email", "email", s, e)
      claims[#claims + 1] = { s, e, "e" }
      init = e + 1
    end
  end
end

-- IBAN: two upper-case letters, two digits, then letters and digits,
-- either in one run or in groups of four separated by single spaces.
local function scan_ibans(text, out, claims)
  local init = 1
  while true do
    local s = find(text, "%f[%w]%u%u%d%d", init)
    if not s then break end
    init = s + 4
    local _, e = find(text, "^[%u%d]+", s)
    local found
    if not ALPHA[byte(text, e + 1) or 0] then
      if e - s + 1 > 4 then -- one run
        if M.iban_valid(sub(text, s, e)) then found = e end
      else -- groups of four
        local parts, ends = { sub(text, s, e) }, {}
        local len = 4
        while len < 34 and byte(text, e + 1) == 32 do
          local gs, ge = find(text, "^[%u%d]+", e + 2)
          if not gs or ge - gs + 1 > 4 or ALPHA[byte(text, ge + 1) or 0] then break end
          parts[#parts + 1] = sub(text, gs, ge)
          len = len + ge - gs + 1
          e = ge
          ends[#ends + 1] = { len, e }
          if ge - gs + 1 < 4 then break end
        end
        local compact = table.concat(parts)
        local want = IBAN_LENGTH[sub(compact, 1, 2)]
        -- the longest valid one; the remainder of compact[5..n] carries
        -- from one end to the next (iban_valid in one pass)
        local r, upto = 0, 4
        for k = 1, #ends do
          local n, stop = ends[k][1], ends[k][2]
          if n > 34 then break end
          r, upto = mod97(compact, upto + 1, n, r), n
          if (n == want or not want and n >= 15) and mod97(compact, 1, 4, r) == 1 then found = stop end
        end
      end
    end
    if found then
      add(out, "iban", "iban", s, found)
      claims[#claims + 1] = { s, found, "h" }
      init = found + 1
    end
  end
end

-- The digit groups of the text that touch no letter (digits inside words,
-- ids and codes are not numbers): GS[i]..GE[i], AT[GS[i]] = i. BLK[i]: "h"
-- inside a secret or IBAN, "e" inside an email address, "c" part of a card.
local function digit_groups(text, claims)
  local GS, GE, AT, BLK = {}, {}, {}, {}
  local n, init = 0, 1
  while true do
    local s, e = find(text, "%f[%w]%d+%f[%W]", init)
    if not s then break end
    n = n + 1
    GS[n], GE[n], AT[s] = s, e, n
    init = e + 1
  end
  -- mark the groups inside claimed spans (claims sorted by start)
  if n > 0 and #claims > 0 then
    local sorted = true
    for k = 2, #claims do
      if claims[k][1] < claims[k - 1][1] then sorted = false break end
    end
    if not sorted then table.sort(claims, function(x, y) return x[1] < y[1] end) end
    local g = 1
    for _, c in ipairs(claims) do
      while g <= n and GS[g] < c[1] do g = g + 1 end
      local k = g
      while k <= n and GE[k] <= c[2] do
        if BLK[k] ~= "h" then BLK[k] = c[3] end
        k = k + 1
      end
    end
  end
  return GS, GE, AT, BLK, n
end

-- Luhn parts of one group of digits: A doubles its even offsets, B its odd
-- ones (offsets counted from 1 inside the group).
local function luhn_parts(g)
  local a, b = 0, 0
  for t = 1, #g do
    local d = byte(g, t) - 48
    if t % 2 == 1 then a, b = a + d, b + DOUBLE[d] else a, b = a + DOUBLE[d], b + d end
  end
  return a, b
end

-- Card windows in the chain of groups a..b: runs of whole groups holding
-- 13 to 19 digits that start at the chain's first group or at a group of
-- three or more digits, with a network's leading digit, Luhn-valid, not all
-- one digit. C/P0/P1 are prefix sums (digits, Luhn sums doubling odd resp.
-- even positions), computed only near possible starts, so each window costs
-- the same whatever its length.
local function card_windows(text, out, GS, GE, BLK, starts, b, memo)
  local C, P0, P1 = {}, {}, {}
  local upto, done = -1, 0
  for _, u in ipairs(starts) do
    if u > done then
      if upto < u - 1 then C[u - 1], P0[u - 1], P1[u - 1], upto = 0, 0, 0, u - 1 end
      local base, x = C[u - 1], u
      while x <= b do
        if upto < x then
          local key = sub(text, GS[x], GE[x])
          local parts = memo[key]
          if not parts then
            local pa, pb = luhn_parts(key)
            parts = { pa, pb }
            memo[key] = parts
          end
          local prev = C[x - 1]
          C[x] = prev + #key
          if prev % 2 == 0 then
            P0[x], P1[x] = P0[x - 1] + parts[2], P1[x - 1] + parts[1]
          else
            P0[x], P1[x] = P0[x - 1] + parts[1], P1[x - 1] + parts[2]
          end
          upto = x
        end
        if C[x] - base > 19 then break end
        x = x + 1
      end
      for y = x - 1, u, -1 do
        if C[y] - base < 13 then break end
        local sum = (C[y] % 2 == 0) and (P0[y] - P0[u - 1]) or (P1[y] - P1[u - 1])
        if sum % 10 == 0 then
          local digits = gsub(sub(text, GS[u], GE[y]), "%D", "")
          local brand = digits ~= rep(sub(digits, 1, 1), #digits) and card_brand(digits)
          if brand then
            add(out, "card", brand, GS[u], GE[y])
            for g = u, y do BLK[g] = "c" end
            done = y
            break
          end
        end
      end
    end
  end
end

-- Cards: chains of groups joined by single spaces or dashes (a group of
-- more than 19 digits ends a chain). A card starts at the chain's first
-- group or at a group of three or more digits, on a network's digit (1-6).
local function scan_cards(text, out, GS, GE, BLK, n)
  local memo = {}
  local i = 1
  while i <= n do
    local j, total = i, GE[i] - GS[i] + 1
    if BLK[i] ~= "h" and total <= 19 then
      local e = GE[i]
      while j < n do
        local s2 = GS[j + 1]
        if s2 ~= e + 2 then break end
        local c = byte(text, e + 1)
        if (c ~= 32 and c ~= 45) or BLK[j + 1] == "h" or GE[j + 1] - s2 >= 19 then break end
        j, e = j + 1, GE[j + 1]
        total = total + e - s2 + 1
      end
      if total >= 13 then
        local starts = {}
        for g = i, j do
          local f = byte(text, GS[g])
          if f >= 49 and f <= 54 and (g == i or GE[g] - GS[g] >= 2) then starts[#starts + 1] = g end
        end
        card_windows(text, out, GS, GE, BLK, starts, j, memo)
      end
    end
    i = j + 1
  end
end

-- Words that make nine bare digits an SSN (within the five words before).
local function ssn_context(text, s)
  local pre = lower(sub(text, s > 100 and s - 100 or 1, s - 1))
  local starts = {}
  for p in string.gmatch(pre, "()%S+") do starts[#starts + 1] = p end
  local tail = sub(pre, starts[#starts > 5 and #starts - 4 or 1] or 1)
  return find(tail, "%f[%w]ssn") or find(tail, "social[%s%-]*security") or find(tail, "ss#", 1, true)
    or find(tail, "%f[%w]taxpayer")
end

-- SSN: ddd-dd-dddd (or spaces, or dots; one delimiter throughout) not
-- joined the same way to more digits, or nine bare digits after a context
-- word; then the format rules.
local SSN_DELIMITED = "%f[%w]%d%d%d([ %-%.])%d%d%1%d%d%d%d%f[%W]"
local SSN_BARE = "%f[%w]" .. rep("%d", 9) .. "%f[%W]"
local function scan_ssns(text, out, AT, BLK)
  local function digit(p) local c = byte(text, p) return c and c >= 48 and c <= 57 end
  local init = 1
  while true do
    local s, e, c = find(text, SSN_DELIMITED, init)
    if not s then break end
    local cb = byte(c)
    local g = AT[s]
    if g and not (BLK[g] or BLK[g + 1] or BLK[g + 2])
       and not (byte(text, s - 1) == cb and digit(s - 2)) and not (byte(text, e + 1) == cb and digit(e + 2))
       and M.ssn_valid(sub(text, s, s + 2) .. sub(text, s + 4, s + 5) .. sub(text, s + 7, e)) then
      add(out, "ssn", "ssn", s, e)
    end
    init = s + 1
  end
  init = 1
  while true do
    local s, e = find(text, SSN_BARE, init)
    if not s then break end
    local lone = not (SEP[byte(text, s - 1) or 0] and digit(s - 2)) and not (SEP[byte(text, e + 1) or 0] and digit(e + 2))
    if lone and AT[s] and not BLK[AT[s]] and M.ssn_valid(sub(text, s, e)) and ssn_context(text, s) then
      add(out, "ssn", "ssn", s, e)
    end
    init = e + 1
  end
end

-- How groups may be joined inside a phone number: "plain" (one space, dash
-- or dot), "open" ("(", " (", "-(") or "close" (")", ") ", ")-", ").").
local function join_kind(text, e, s2)
  local gap = s2 - e - 1
  if gap == 1 then
    local c = byte(text, e + 1)
    if c == 32 or c == 45 or c == 46 then return "plain", c end
    if c == 40 then return "open" end
    if c == 41 then return "close" end
  elseif gap == 2 then
    local c1, c2 = byte(text, e + 1, e + 2)
    if c2 == 40 and (c1 == 32 or c1 == 45) then return "open" end
    if c1 == 41 and (c2 == 32 or c2 == 45 or c2 == 46) then return "close" end
  end
  return nil
end

-- Phones: "+" and 8-15 digits (E.164, maybe grouped), or national forms
-- with 10-11 digits in groups: (415) 555-0123, 415-555-0123, 415.555.0123,
-- 1 415 555 0123, and trunk-0 forms like 020 7946 0958. Groups after the
-- first join use one separator; a number joined to more digits the same
-- way is part of something longer and is not a phone.
local function scan_phones(text, out, GS, GE, BLK, n)
  local i = 1
  while i <= n do
    local s0, e0 = GS[i], GE[i]
    local len, first, pb = e0 - s0 + 1, byte(text, s0), byte(text, s0 - 1)
    -- where a phone number can start: after "+" or "(", a three-digit
    -- area code, a trunk "0…", or the NANP "1"
    if BLK[i] or not (pb == 43 or pb == 40 or len == 3 or (first == 48 and len >= 2) or (first == 49 and len == 1))
       or (i > 1 and i < n and GS[i] - GE[i - 1] == 2 and GS[i + 1] - e0 == 2 and byte(text, e0 + 1) == pb) then
      i = i + 1 -- not a start, or in the middle of a run joined one way
    else
      local start, intl, open = s0, false, false
      if pb == 43 and not ALNUM[byte(text, s0 - 2) or 0] then
        intl, start = true, s0 - 1
      elseif pb == 40 and i < n and join_kind(text, e0, GS[i + 1]) == "close" then
        open, start = true, s0 - 1
      end
      local lens, digits, sep = { len }, len, nil
      local j = i
      local most = intl and 15 or 11
      while j < n and digits <= most and not BLK[j + 1] do
        local kind, c
        if GS[j + 1] - GE[j] == 2 and SEP[byte(text, GE[j] + 1)] then
          kind, c = "plain", byte(text, GE[j] + 1)
        else
          kind, c = join_kind(text, GE[j], GS[j + 1])
        end
        if kind == "plain" then
          if open then break end
          if not (intl and j == i and len <= 3) then
            if sep == nil then sep = c elseif c ~= sep then break end
          end
        elseif kind == "open" then
          if open or j + 1 >= n or join_kind(text, GE[j + 1], GS[j + 2]) ~= "close" then break end
          open = true
        elseif kind == "close" then
          if not open then break end
          open = false
        else
          break
        end
        j = j + 1
        local l = GE[j] - GS[j] + 1
        lens[#lens + 1] = l
        digits = digits + l
      end
      local kind
      if i > 1 and GS[i] - GE[i - 1] == 2 and pb == sep then
        kind = nil -- joined to more digits the same way
      elseif intl then
        if digits >= 8 and digits <= 15 and first ~= 48 then kind = (j == i) and "e164" or "international" end
      elseif #lens >= 2 then
        local g = #lens
        if digits == 10 and g == 3 and lens[1] == 3 and lens[2] == 3 and lens[3] == 4 then
          kind = "nanp"
        elseif digits == 11 and g == 4 and first == 49 and lens[2] == 3 and lens[3] == 3 and lens[4] == 4 then
          kind = "nanp"
        elseif first == 48 and digits >= 10 and digits <= 11 then
          kind = "national"
          for k = 1, g do if lens[k] < 2 then kind = nil end end
        end
      end
      if kind then add(out, "phone", kind, start, GE[j]) end
      i = j + 1
    end
  end
end

local function scan(text)
  text = M.normalize(text)
  local out, claims = {}, {}
  scan_secrets(text, out, claims)
  scan_ibans(text, out, claims)
  scan_emails(text, out, claims)
  local GS, GE, AT, BLK, n = digit_groups(text, claims)
  if n > 0 then
    scan_cards(text, out, GS, GE, BLK, n)
    scan_ssns(text, out, AT, BLK)
    scan_phones(text, out, GS, GE, BLK, n)
  end
  return out
end

-- Findings in the order they appear in the normalized text.
function M.scan(text)
  if type(text) ~= "string" then error("detect.scan: expected a string", 2) end
  local out = scan(text)
  table.sort(out, function(a, b)
    if a.start ~= b.start then return a.start < b.start end
    return a.category < b.category
  end)
  return out
end

-- The set of categories found.
function M.categories(text)
  if type(text) ~= "string" then error("detect.categories: expected a string", 2) end
  local set = {}
  for _, f in ipairs(scan(text)) do set[f.category] = true end
  return set
end

M.CATEGORIES = { "secret", "card", "iban", "ssn", "email", "phone" }

return M
