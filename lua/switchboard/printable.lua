-- Text from outside (an SMS body, an id an agent chose, a server message)
-- shown to a person, on a terminal or in the log: C0 controls, DEL, C1
-- controls and bytes that are not UTF-8 are shown escaped ("\x1b",
-- "\u009b"), as git and journalctl do, so that they never reach the
-- terminal raw. keep_newlines: "\n" stays.
local M = {}

local C_ESCAPES = { [9] = "\\t", [10] = "\\n", [13] = "\\r" }

function M.escape(s, keep_newlines)
  s = tostring(s)
  if not s:find("[%z\1-\31\127-\255]") then return s end
  local out, i, n = {}, 1, #s
  while i <= n do
    local b = s:byte(i)
    local len = b < 0x80 and 1 or b >= 0xC2 and b <= 0xDF and 2 or b >= 0xE0 and b <= 0xEF and 3
      or b >= 0xF0 and b <= 0xF4 and 4 or 0
    local ch = s:sub(i, i + math.max(len, 1) - 1)
    if len == 1 then
      if (b < 0x20 and not (keep_newlines and b == 10)) or b == 0x7F then
        ch = C_ESCAPES[b] or ("\\x%02x"):format(b)
      end
    elseif len > 1 and utf8.len(ch) == 1 then
      local cp = utf8.codepoint(ch)
      if cp <= 0x9F then ch = ("\\u%04x"):format(cp) end
    else
      ch, len = ("\\x%02x"):format(b), 1
    end
    out[#out + 1] = ch
    i = i + len
  end
  return table.concat(out)
end

return M
