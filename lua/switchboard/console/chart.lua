-- Bar charts drawn on the server as SVG (no script, no chart library):
-- one horizontal bar per item, its label and value beside it. Every text
-- is HTML-escaped; the SVG uses presentation attributes only (the
-- console's CSP allows no inline style).
local template = require("switchboard.console.template")

local M = {}

local esc = template.escape

-- items: { { label, value } ... }; opts: { title, unit, integer }.
function M.bars(items, opts)
  opts = opts or {}
  local max = 0
  for _, it in ipairs(items) do if (it.value or 0) > max then max = it.value end end
  local row, label_w, bar_w, pad = 24, 200, 360, 8
  local h = #items * row + 2 * pad + 20
  local w = label_w + bar_w + 120
  local out = { ('<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="%d" height="%d"'
    .. ' viewBox="0 0 %d %d" aria-label="%s"><title>%s</title>'):format(w, h, w, h, esc(opts.title), esc(opts.title)) }
  for i, it in ipairs(items) do
    local v = it.value or 0
    local y = pad + 20 + (i - 1) * row
    local len = max > 0 and math.floor(v / max * bar_w + 0.5) or 0
    local shown = opts.integer and ("%d"):format(math.floor(v)) or ("%.4f"):format(v)
    out[#out + 1] = ('<text x="%d" y="%d" text-anchor="end" font-size="12" fill="#333">%s</text>')
      :format(label_w - 6, y + 15, esc(it.label))
    out[#out + 1] = ('<rect class="bar" x="%d" y="%d" width="%d" height="%d" fill="#3b6ea5"><title>%s: %s %s</title></rect>')
      :format(label_w, y + 3, math.max(len, 1), row - 6, esc(it.label), esc(shown), esc(opts.unit))
    out[#out + 1] = ('<text x="%d" y="%d" font-size="12" fill="#333">%s %s</text>')
      :format(label_w + math.max(len, 1) + 6, y + 15, esc(shown), esc(opts.unit))
  end
  out[#out + 1] = ('<text x="%d" y="%d" font-size="13" font-weight="bold" fill="#111">%s</text></svg>')
    :format(pad, pad + 10, esc(opts.title))
  return table.concat(out)
end

return M
