-- The console's admin methods: `console.link` (a one-time login link,
-- what `switchboard admin console-link` prints) and `sends.daily` (a
-- tenant's sends per day by outcome and delivery, for the usage page).
local json = require("switchboard.json")
local directory = require("switchboard.directory")

local M = {}

M.DAYS, M.MAX_DAYS = 30, 90

function M.install(admin)
  local refuse, methods = admin.refuse, admin.methods

  methods["console.link"] = function(self, p)
    local console = self.server.console
    if not console then
      refuse("console link: the console is off; set console.listen in the configuration and restart")
    end
    local t
    if p.tenant ~= nil then t = self:tenant(p, "console link") end
    local link = console:new_link(t and t.name or nil, p.actor)
    directory.settings_audit(self.db, t and t.id or nil, p.actor, "console.link", nil,
      { scope = t and "tenant" or "operator", tenant = t and t.name or nil, expires_at = link.expires_at })
    return link
  end

  methods["sends.daily"] = function(self, p)
    local t = self:tenant(p, "sends daily")
    local days = p.days == nil and M.DAYS or math.tointeger(tonumber(p.days))
    if not days or days < 1 or days > M.MAX_DAYS then
      refuse(("sends daily: 'days' must be a whole number from 1 to %d"):format(M.MAX_DAYS), -32602)
    end
    local since = os.time() - days * 86400
    local rows, err = require("switchboard.store.stats").sends_per_day(self.db, t.id, since)
    if not rows then refuse("sends daily: the send records could not be read: " .. tostring(err)) end
    local by_day, order = {}, {}
    for _, r in ipairs(rows) do
      local d = by_day[r.day]
      if not d then
        d = { day = r.day, total = 0, outcomes = {}, deliveries = {} }
        by_day[r.day] = d
        order[#order + 1] = d
      end
      d.total = d.total + r.n
      d.outcomes[r.status] = (d.outcomes[r.status] or 0) + r.n
      if r.delivery ~= "" then d.deliveries[r.delivery] = (d.deliveries[r.delivery] or 0) + r.n end
    end
    return { tenant = t.name, days = days, since = require("switchboard.time").date(since), per_day = json.array(order) }
  end
end

return M
