-- The console's pages: each reads the admin methods' answers (through
-- console:call, as the CLI would call them) and renders a template; each
-- form posts to an action that calls one admin method and redirects back
-- with its message.
local json = require("switchboard.json")
local chart = require("switchboard.console.chart")

local time = require("switchboard.time")

local M = {}

local MAX_DAYS = 30

-- A list of an answer (an empty one is json.array's marker, not a table).
local function list(v) return type(v) == "table" and v or {} end

local function flash(s, kind, text, extra)
  s.flash = { kind = kind, text = text, error = kind == "error" or nil }
  for k, v in pairs(extra or {}) do s.flash[k] = v end
end

local function str(v)
  if v == nil or v == json.null then return "" end
  if v == true then return "yes" end
  if v == false then return "no" end
  if type(v) == "table" then return json.encode(v) end
  return tostring(v)
end

local function preview(v, n)
  local s = str(v)
  if #s > n then s = s:sub(1, n):gsub("[\128-\191]*$", ""):gsub("[\192-\255]$", "") .. "…" end
  return s
end

local function pretty(v)
  if v == nil or v == json.null then return "" end
  return json.encode(v)
end

-- Turn one admin call's outcome into a message and a redirect.
local function act(c, s, back, method, params, ok_text)
  local r, err = c:call(s, method, params)
  if not r then
    flash(s, "error", err)
  else
    flash(s, "ok", type(ok_text) == "function" and ok_text(r) or ok_text)
  end
  return c:redirect(back)
end

local function integration(c, name)
  for _, d in ipairs(c.integrations) do if d.name == name then return d end end
  return nil
end

-- {{{ tenants (operators)

local function tenants_page(c, s)
  local r, err = c:call(s, "tenant.list", {})
  local rows = {}
  for _, t in ipairs(list(r and r.tenants)) do
    rows[#rows + 1] = { name = t.name, features = table.concat(list(t.features), ", "), agents = t.agents,
                        created_at = t.created_at }
  end
  local features = {}
  for _, d in ipairs(c.integrations) do
    if d.feature then features[#features + 1] = { code = d.feature, title = d.title } end
  end
  return c:render(s, "tenants", { title = "Tenants", tenants = rows, error = err, features = features })
end

local function split_edits(v)
  local out = {}
  if type(v) == "table" then
    for _, x in ipairs(v) do out[#out + 1] = x end
  elseif type(v) == "string" then
    for w in v:gmatch("%S+") do out[#out + 1] = w end
  end
  return out
end

-- }}}

-- {{{ a tenant's connections

local function tenant_page(c, s, tenant, base)
  local out = {}
  for _, d in ipairs(c.integrations) do
    local v = c:call(s, d.methods.show, {})
    out[#out + 1] = { name = d.name, title = d.title, connected = v ~= nil, status = v and v.status or nil,
                        error = v and v.status ~= "active" or nil, reason = v and v.status_reason or nil,
                        account = v and v.account_name or nil }
  end
  return c:render(s, "tenant", { title = "Tenant " .. tenant, tenant = tenant, base = base, integrations = out })
end

local INPUT = { secret = "password", phone = "tel", text = "text" }

local function field_views(d, values, only_updatable)
  local out = {}
  for _, f in ipairs(list(d.fields)) do
    if not only_updatable or f.updatable then
      out[#out + 1] = { name = f.name, label = f.label, hint = f.hint, type = INPUT[f.kind] or "text",
        secret = f.kind == "secret" or nil, required = (not only_updatable and f.required) or nil,
        value = f.kind ~= "secret" and values and type(values[f.name]) == "string" and values[f.name] or nil }
    end
  end
  return out
end

-- The show answer's settings, in a stable order (never a secret: the
-- methods' views do not hold one).
local SKIP = { tenant = true, status = true, status_reason = true, account_name = true, autonomous_sends = true }
local function config_rows(v)
  local keys = {}
  for k, x in pairs(v) do
    if not SKIP[k] and type(x) ~= "table" then keys[#keys + 1] = k end
  end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do out[#out + 1] = { key = k:gsub("_", " "), value = str(v[k]) } end
  return out
end

local function tab_view(c, s, d, tab, query)
  local params = {}
  if tab.paged then
    params.limit = math.min(c.cfg.page_size, 100)
    if type(query.after) == "string" and query.after ~= "" then params.after = query.after end
  end
  local r, err = c:call(s, tab.method, params)
  local view = { name = tab.name, title = tab.title, error = err, columns = tab.columns, rows = {} }
  if r then
    for _, item in ipairs(list(r[tab.list])) do
      local cells = {}
      for _, col in ipairs(tab.columns) do
        cells[#cells + 1] = { value = preview(item[col.key], 160) }
      end
      view.rows[#view.rows + 1] = { cells = cells }
    end
    view.empty = #view.rows == 0 or nil
    if tab.paged and type(r.next) == "string" then view.next, view.next_q = r.next, M.escape_query(r.next) end
  end
  return view
end

local function connection_page(c, s, tenant, base, d, tabname, query)
  local v = c:call(s, d.methods.show, {})
  local form = s.flash and s.flash.form
  local values = { title = d.title .. " — " .. tenant, tenant = tenant, base = base, name = d.name,
                   integration = d.title, group = d.group, home = base .. "/c/" .. d.name }
  if not v then
    values.fields = field_views(d, form, false)
    return c:render(s, "connection", values)
  end
  values.connected = true
  values.status = v.status
  values.active = v.status == "active" or nil
  values.reason = v.status_reason
  values.account = v.account_name
  values.autonomous = v.autonomous_sends == true or nil
  values.config = config_rows(v)
  values.update_fields = field_views(d, form, true)
  local tabs = {}
  for _, t in ipairs(list(d.tabs)) do
    tabs[#tabs + 1] = { name = t.name, title = t.title, current = t.name == tabname or nil }
    if t.name == tabname then values.tab = tab_view(c, s, d, t, query) end
  end
  values.tabs = tabs
  values.usage = d.usage and true or nil
  return c:render(s, "connection", values)
end

local function connection_action(c, s, base, d, action, form)
  local home = base .. "/c/" .. d.name
  local params = {}
  if action == "connect" or action == "update" then
    for _, f in ipairs(list(d.fields)) do
      local x = form[f.name]
      if type(x) == "string" and x:match("%S") and (action == "connect" or f.updatable) then params[f.name] = x end
    end
    local r, err = c:call(s, d.methods[action], params)
    if not r then
      local keep = {}
      for _, f in ipairs(list(d.fields)) do
        if f.kind ~= "secret" and type(form[f.name]) == "string" then keep[f.name] = form[f.name] end
      end
      flash(s, "error", err, { form = keep })
    else
      local w = list(r.warnings)
      local warnings = #w > 0 and (" " .. table.concat(w, "; ")) or ""
      flash(s, "ok", (action == "connect" and "Connected: %d numbers loaded." or "Settings updated (status %s).")
        :format(action == "connect" and (r.number_count or 0) or r.status) .. warnings)
    end
    return c:redirect(home .. (r and action == "connect" and "/tab/numbers" or ""))
  elseif action == "test" then
    local r, err = c:call(s, d.methods.test, {})
    if not r then flash(s, "error", err)
    elseif r.ok then flash(s, "ok", "The connection works: status active.")
    else flash(s, "error", "The test failed: " .. tostring(r.problem or r.status_reason or r.status)) end
    return c:redirect(home)
  elseif action == "disconnect" then
    if form.confirm ~= "yes" then flash(s, "error", "Disconnecting needs its confirmation.") return c:redirect(home) end
    return act(c, s, home, d.methods.disconnect, {}, "Disconnected: the sealed key and the tool group are removed.")
  elseif action == "autonomous" then
    local value = form.value == "on" and "on" or form.value == "off" and "off" or nil
    if not value or form.confirm ~= "yes" then
      flash(s, "error", "Changing autonomous sends needs its confirmation; nothing was changed.")
      return c:redirect(home)
    end
    return act(c, s, home, d.methods.autonomous_sends, { value = value, confirm = true },
      ("Autonomous sends are %s."):format(value))
  end
  return c:message(s, 404, "Not found", "No such action.")
end

-- }}}

-- {{{ escalations, executions, agents, audit, usage

local function next_of(r)
  if r and type(r.next) == "string" then return r.next, M.escape_query(r.next) end
  return nil
end

local function escalations_page(c, s, tenant, base, query)
  local status = ({ open = "open", all = "all", approved = "approved", rejected = "rejected" })[query.status] or "open"
  local params = { status = status, limit = 50 }
  if type(query.after) == "string" and query.after ~= "" then params.after = query.after end
  local r, err = c:call(s, "escalations.list", params)
  local rows = {}
  for _, e in ipairs(list(r and r.escalations)) do
    rows[#rows + 1] = { id = e.id, agent = e.agent, tool = e.tool, action = str(e.action), kind = e.kind,
                        reason = e.reason, status = e.status, open = e.status == "open" or nil,
                        created_at = e.created_at, decided_by = str(e.decided_by), note = str(e.note) }
  end
  return c:render(s, "escalations", { title = "Escalations — " .. tenant, tenant = tenant, base = base, error = err,
    escalations = rows, status = status, next = next_of(r), next_q = select(2, next_of(r)),
    empty = #rows == 0 or nil })
end

local function escalation_page(c, s, tenant, base, id)
  local e, err = c:call(s, "escalation.show", { id = id })
  if not e then return c:message(s, 404, "Escalation", err) end
  return c:render(s, "escalation", { title = "Escalation " .. id, tenant = tenant, base = base, id = e.id,
    agent = e.agent, tool = e.tool, action = str(e.action), kind = e.kind, reason = e.reason, policy = str(e.policy),
    status = e.status, open = e.status == "open" or nil, decided_by = str(e.decided_by), note = str(e.note),
    created_at = e.created_at, arguments = pretty(e.arguments),
    result = e.result and str(e.result.text) or nil, result_error = e.result and e.result.is_error or nil })
end

local function days_of(query)
  local d = math.tointeger(tonumber(query.days or ""))
  if not d or d < 1 then return 7 end
  return math.min(d, MAX_DAYS)
end

local function executions_page(c, s, tenant, base, query)
  local days = days_of(query)
  local params = { days = days, limit = 50 }
  if type(query.after) == "string" and query.after ~= "" then params.after = query.after end
  local r, err = c:call(s, "executions.list", params)
  local rows = {}
  for _, x in ipairs(list(r and r.executions)) do
    local calls = {}
    for _, k in ipairs(list(x.calls)) do
      calls[#calls + 1] = { tool = k.tool, action = str(k.action), duration = str(k.duration_ms),
                            outcome = str(k.outcome), decision = str(k.decision) }
    end
    rows[#rows + 1] = { id = x.id, agent = str(x.agent), started_at = x.started_at, ended_at = x.ended_at,
      calls = calls, more = x.more_calls,
      href = ("%s/execution?id=%s&agent=%s"):format(base, M.escape_query(x.id), M.escape_query(str(x.agent))) }
  end
  local choices = {}
  for _, d in ipairs({ 1, 7, 14, 30 }) do choices[#choices + 1] = { days = d, selected = d == days or nil } end
  return c:render(s, "executions", { title = "Executions — " .. tenant, tenant = tenant, base = base, error = err,
    executions = rows, days = days, choices = choices, empty = #rows == 0 or nil,
    next = next_of(r), next_q = select(2, next_of(r)) })
end

local function execution_page(c, s, tenant, base, query)
  local params = { id = query.id }
  if type(query.agent) == "string" and query.agent ~= "" then params.agent = query.agent end
  local r, err = c:call(s, "execution.show", params)
  if not r then return c:message(s, 404, "Execution", err) end
  local calls = {}
  for _, k in ipairs(list(r.calls)) do
    calls[#calls + 1] = { at = k.at, tool = k.tool, action = str(k.action), decision = str(k.decision),
      outcome = str(k.outcome), duration = str(k.duration_ms), tier = str(k.sender_tier), params = pretty(k.params),
      detail = pretty(k.detail) }
  end
  return c:render(s, "execution", { title = "Execution " .. tostring(r.id), tenant = tenant, base = base,
    id = r.id, agent = str(r.agent), calls = calls })
end

local function agents_page(c, s, tenant, base)
  local r, err = c:call(s, "agent.list", {})
  local rows = {}
  for _, a in ipairs(list(r and r.agents)) do
    rows[#rows + 1] = { name = a.name, type = a.type, tier = a.default_tier, groups = table.concat(list(a.groups), ", "),
      status = a.status, active = a.status == "active" or nil, token_hint = str(a.token_hint),
      created_at = a.created_at }
  end
  local groups = {}
  for _, d in ipairs(c.integrations) do if d.group then groups[#groups + 1] = { name = d.group } end end
  local token = s.flash and s.flash.token
  return c:render(s, "agents", { title = "Agents — " .. tenant, tenant = tenant, base = base, error = err,
    agents = rows, groups_all = groups, token = token })
end

local function agents_action(c, s, base, action, form)
  local back = base .. "/agents"
  if action == "add" then
    local groups = {}
    for _, g in ipairs(split_edits(form.groups)) do groups[#groups + 1] = g end
    if type(form.group) == "string" and form.group ~= "" then groups[#groups + 1] = form.group end
    local r, err = c:call(s, "agent.add", { name = form.name, type = form.type, default_tier = form.tier,
                                            groups = groups })
    if not r then flash(s, "error", err)
    else flash(s, "ok", ("Agent %s added. Its token is shown once, below: give it to the agent now."):format(r.name),
      { token = r.token }) end
    return c:redirect(back)
  elseif action == "revoke" then
    if form.confirm ~= "yes" then flash(s, "error", "Revoking needs its confirmation.") return c:redirect(back) end
    return act(c, s, back, "agent.revoke", { agent = form.agent }, ("Agent %s revoked."):format(str(form.agent)))
  elseif action == "groups" then
    local op = form.op == "remove" and "-" or "+"
    local group = type(form.group) == "string" and form.group or ""
    return act(c, s, back, "agent.groups", { agent = form.agent, edits = { op .. group } }, function(r)
      return ("Agent %s now has: %s."):format(r.agent, table.concat(list(r.groups), ", ")) end)
  end
  return c:message(s, 404, "Not found", "No such action.")
end

local function audit_page(c, s, tenant, base, query)
  local params = { limit = 50 }
  if type(query.after) == "string" and query.after ~= "" then params.after = query.after end
  local r, err = c:call(s, "audit.settings", params)
  local rows = {}
  for _, x in ipairs(list(r and r.changes)) do
    rows[#rows + 1] = { at = x.at, actor = str(x.actor), action = x.action, old = pretty(x.old), new = pretty(x.new) }
  end
  local verify
  if not s.tenant and query.verify == "1" then
    local v, verr = c:call(s, "audit.verify", {})
    verify = { ok = v and v.ok ~= false or nil, error = verr, text = v and pretty(v) or nil }
  end
  return c:render(s, "audit", { title = "Audit trail — " .. tenant, tenant = tenant, base = base, error = err,
    changes = rows, empty = #rows == 0 or nil, verify = verify,
    next = next_of(r), next_q = select(2, next_of(r)) })
end

local PERIODS = { { "this-month", "This month" }, { "last-30-days", "Last 30 days" }, { "last-month", "Last month" } }

local function period(name)
  local now = time.unix()
  local today = time.date(now)
  if name == "last-30-days" then return time.date(now - 29 * 86400), today, name end
  if name == "last-month" then
    -- the day before this month's first is the last of the month before
    local last = time.month_start(now) - 86400
    return time.date(time.month_start(last)), time.date(last), name
  end
  return today:sub(1, 8) .. "01", today, "this-month"
end

local function usage_page(c, s, tenant, base, query)
  local start, stop, pname = period(query.period)
  local sections = {}
  for _, d in ipairs(c.integrations) do
    if d.usage then
      local r, err = c:call(s, d.usage, { start = start, ["end"] = stop })
      local rows, bars = {}, {}
      local total = 0
      for _, x in ipairs(list(r and r.records)) do
        if x.category ~= "totalprice" then
          rows[#rows + 1] = { category = x.category, description = str(x.description), count = str(x.count),
            usage = str(x.usage), unit = str(x.usage_unit), price = ("%.4f"):format(x.price or 0),
            price_unit = str(x.price_unit) }
          bars[#bars + 1] = { label = x.description or x.category, value = x.price or 0 }
          total = total + (x.price or 0)
        end
      end
      sections[#sections + 1] = { title = d.title, error = err, records = rows, empty = #rows == 0 or nil,
        total = ("%.4f"):format(total), chart = #bars > 0 and chart.bars(bars, { title = d.title
          .. " spend by category, " .. start .. " to " .. stop, unit = "USD" }) or nil }
    end
  end
  local daily, derr = c:call(s, "sends.daily", { days = 30 })
  local days = {}
  local points = {}
  for _, x in ipairs(list(daily and daily.per_day)) do
    local parts, deliveries = {}, {}
    for k, n in pairs(x.outcomes or {}) do parts[#parts + 1] = ("%s %d"):format(k, n) end
    for k, n in pairs(x.deliveries or {}) do deliveries[#deliveries + 1] = ("%s %d"):format(k, n) end
    table.sort(parts)
    table.sort(deliveries)
    days[#days + 1] = { day = x.day, total = x.total, outcomes = table.concat(list(parts), ", "),
                        deliveries = table.concat(list(deliveries), ", ") }
    points[#points + 1] = { label = x.day:sub(6), value = x.total }
  end
  local choices = {}
  for _, p in ipairs(PERIODS) do choices[#choices + 1] = { name = p[1], label = p[2], selected = p[1] == pname or nil } end
  return c:render(s, "usage", { title = "Usage — " .. tenant, tenant = tenant, base = base, start = start, stop = stop,
    sections = sections, choices = choices, days = days, days_error = derr, no_days = #days == 0 or nil,
    sends_chart = #points > 0 and chart.bars(points, { title = "Sends per day, last 30 days", unit = "sends",
      integer = true }) or nil })
end

-- }}}

function M.escape_query(v)
  return (tostring(v):gsub("[^%w%-%._~]", function(ch) return ("%%%02X"):format(ch:byte()) end))
end

-- Dispatch a page or an action of the session.
function M.route(c, s, _, method, path, query, form)
  if path == "/" then
    return c:redirect(s.tenant and ("/t/" .. s.tenant) or "/tenants")
  end
  if path == "/tenants" and method ~= "POST" then
    if s.tenant then return c:message(s, 403, "Forbidden", "Only an operator sees the tenants.") end
    return tenants_page(c, s)
  end
  if path == "/tenants/add" and method == "POST" then
    if s.tenant then return c:message(s, 403, "Forbidden", "Only an operator adds tenants.") end
    return act(c, s, "/tenants", "tenant.add", { name = form.name }, ("Tenant %s added."):format(str(form.name)))
  end
  if path == "/tenants/features" and method == "POST" then
    if s.tenant then return c:message(s, 403, "Forbidden", "Only an operator changes feature codes.") end
    return act(c, s, "/tenants", "tenant.features", { tenant = form.tenant, edits = split_edits(form.edits) },
      function(r) return ("Tenant %s has: %s."):format(r.tenant, table.concat(list(r.features), ", ")) end)
  end
  local tenant, rest = path:match("^/t/([%w][%w_%.%-]*)(.*)$")
  if not tenant then return c:message(s, 404, "Not found", "There is no such page.") end
  if s.tenant and s.tenant ~= tenant then
    return c:message(s, 403, "Forbidden", "This login is for another tenant.")
  end
  if not s.tenant and not require("switchboard.directory").tenant(c.server.db, tenant) then
    return c:message(s, 404, "Not found", "There is no such tenant.")
  end
  local base = "/t/" .. tenant
  -- an operator's calls are for the tenant of the page (whatever a form
  -- says); a tenant administrator's are for their own (console:call)
  local call = c.call
  local cc = setmetatable({ call = function(self_, _, m, p)
    p = p or {}
    p.tenant = tenant
    return call(self_, s, m, p)
  end }, { __index = c })
  if rest == "" and method ~= "POST" then return tenant_page(cc, s, tenant, base) end
  local iname, irest = rest:match("^/c/([%w_]+)(.*)$")
  if iname then
    local d = integration(c, iname)
    if not d then return c:message(s, 404, "Not found", "There is no such integration.") end
    if irest == "" and method ~= "POST" then return connection_page(cc, s, tenant, base, d, nil, query) end
    local tab = irest:match("^/tab/([%w_]+)$")
    if tab and method ~= "POST" then return connection_page(cc, s, tenant, base, d, tab, query) end
    local action = irest:match("^/(%a+)$")
    if action and method == "POST" then return connection_action(cc, s, base, d, action, form) end
    return c:message(s, 404, "Not found", "There is no such page.")
  end
  if rest == "/escalations" and method ~= "POST" then return escalations_page(cc, s, tenant, base, query) end
  local eid, eaction = rest:match("^/escalations/(%d+)/?(%a*)$")
  if eid then
    if eaction == "" and method ~= "POST" then return escalation_page(cc, s, tenant, base, tonumber(eid)) end
    if method == "POST" and eaction == "approve" then
      return act(cc, s, base .. "/escalations/" .. eid, "escalation.approve", { id = tonumber(eid) }, function(r)
        return ("Escalation %d approved and run once: %s"):format(r.id, str(r.result and r.result.text)) end)
    end
    if method == "POST" and eaction == "reject" then
      return act(cc, s, base .. "/escalations/" .. eid, "escalation.reject", { id = tonumber(eid), reason = form.reason },
        function(r) return ("Escalation %d rejected."):format(r.id) end)
    end
  end
  if rest == "/executions" and method ~= "POST" then return executions_page(cc, s, tenant, base, query) end
  if rest == "/execution" and method ~= "POST" then return execution_page(cc, s, tenant, base, query) end
  if rest == "/agents" and method ~= "POST" then return agents_page(cc, s, tenant, base) end
  local aaction = rest:match("^/agents/(%a+)$")
  if aaction and method == "POST" then return agents_action(cc, s, base, aaction, form) end
  if rest == "/audit" and method ~= "POST" then return audit_page(cc, s, tenant, base, query) end
  if rest == "/usage" and method ~= "POST" then return usage_page(cc, s, tenant, base, query) end
  return c:message(s, 404, "Not found", "There is no such page.")
end

return M
