-- The command line: `switchboard serve | admin | connect | sim | exec |
-- version`, parsed with lua-argparse (unknown options and extra arguments
-- are refused with exit 2; --help on every command). The admin commands
-- talk JSON-RPC to the admin socket and print tables for people or JSON
-- with --json.
local argparse = require("argparse")
local loop = require("core.loop")
local json = require("switchboard.json")
local config = require("switchboard.config")
local integrations = require("switchboard.integrations")

local M = { commands = {}, VERSION = "0.1.0" }

-- Text from outside shown on a terminal: controls and bytes that are not
-- UTF-8 escaped (switchboard.printable).
local printable = require("switchboard.printable").escape
M.printable = printable

local function die(msg, code)
  io.stderr:write("switchboard: ", printable(msg, true), "\n")
  return code or 1
end

-- Installed (root is PREFIX/share/switchboard): the service's file,
-- SYSCONFDIR/switchboard/switchboard.conf.lua, when there is one.
local function installed_config(root)
  local prefix = root and root:match("^(.*)/share/switchboard$")
  if not prefix then return nil end
  local path = (prefix == "/usr" and "/etc" or prefix .. "/etc") .. "/switchboard/switchboard.conf.lua"
  return require("lfs").attributes(path, "mode") == "file" and path or nil
end

local function load_config(opts, root)
  local cfg, err = config.load(opts.config or os.getenv("SWITCHBOARD_CONFIG") or installed_config(root), root)
  if not cfg then return nil, err end
  return cfg
end

function M.commands.serve(opts, root)
  local cfg, err = load_config(opts, root)
  if not cfg then return die(err, 2) end
  local ok, serr = require("switchboard.server").serve(cfg)
  if not ok then return die(serr, 1) end
  return 0
end

-- Run fn in a coroutine on the loop and return what it returns.
local function run_async(fn)
  local out
  loop.spawn(function()
    out = table.pack(pcall(fn))
    loop.stop()
  end)
  if not out then loop.run() end
  if not out[1] then error(out[2], 0) end
  return table.unpack(out, 2, out.n)
end
M.run_async = run_async

-- One admin request; returns result or nil, error message. Notifications
-- the server sends before the answer (progress) go to on_note(method, params).
function M.admin_call(socket, method, params, on_note)
  local s, err = loop.connect(socket)
  if not s then return nil, ("cannot reach the admin socket %s: %s (is `switchboard serve` running?)"):format(socket, err) end
  params = params or {}
  params.actor = os.getenv("USER") or os.getenv("LOGNAME")
  s:write(json.encode({ jsonrpc = "2.0", id = 1, method = method, params = params }) .. "\n")
  local msg
  while true do
    local line, rerr = s:read_line(16 * 1048576, 600)
    if not line then
      s:close()
      return nil, "admin socket: " .. tostring(rerr)
    end
    msg = json.decode(line)
    if type(msg) ~= "table" then
      s:close()
      return nil, "admin socket: malformed answer"
    end
    if msg.id ~= nil or msg.method == nil then break end
    if on_note then on_note(msg.method, msg.params) end
  end
  s:close()
  if msg.error then return nil, msg.error.message end
  return msg.result
end

-- Tables for people: columns in order, values as text.
local function cell(v)
  if v == nil or v == json.null then return "-" end
  if math.type(v) == "float" and v == math.floor(v) and math.abs(v) < 2^53 then
    return ("%d"):format(v)
  end
  if type(v) == "boolean" then return v and "yes" or "no" end
  if type(v) == "table" then
    local parts = {}
    for _, x in ipairs(v) do parts[#parts + 1] = printable(x) end
    return #parts > 0 and table.concat(parts, ", ") or "-"
  end
  return printable(v)
end

function M.table(rows, cols, no_head)
  local widths, lines = {}, {}
  for i, c in ipairs(cols) do widths[i] = utf8.len(c[2]) end
  local cells = {}
  for r, row in ipairs(rows) do
    cells[r] = {}
    for i, c in ipairs(cols) do
      local v = cell(row[c[1]])
      cells[r][i] = v
      widths[i] = math.max(widths[i], utf8.len(v) or #v)
    end
  end
  local function line(vals)
    local parts = {}
    for i, v in ipairs(vals) do
      parts[i] = v .. string.rep(" ", widths[i] - (utf8.len(v) or #v))
    end
    return (table.concat(parts, "  "):gsub("%s+$", ""))
  end
  local head = {}
  for i, c in ipairs(cols) do head[i] = c[2] end
  if not no_head then lines[1] = line(head) end
  for _, r in ipairs(cells) do lines[#lines + 1] = line(r) end
  if #lines == 0 then return "" end
  return table.concat(lines, "\n") .. "\n"
end

function M.fields(obj, keys)
  local out = {}
  for _, k in ipairs(keys) do
    out[#out + 1] = ("%-16s %s"):format(k[2] .. ":", cell(obj[k[1]]))
  end
  return table.concat(out, "\n") .. "\n"
end

local AGENT_COLS = { { "tenant", "TENANT" }, { "name", "AGENT" }, { "type", "TYPE" },
                     { "groups", "GROUPS" }, { "default_tier", "TIER" }, { "status", "STATUS" },
                     { "token_hint", "TOKEN" } }

-- admin verbs: noun -> verb -> function(ctx) returning method, params, printer
M.admin = {}
local admin = M.admin

admin.tenant = {
  add = function(c) return "tenant.add", { name = c.pos[1] }, function(r)
    return ("tenant %s added\n"):format(r.name) end end,
  list = function() return "tenant.list", {}, function(r)
    return M.table(r.tenants, { { "name", "TENANT" }, { "features", "FEATURES" },
                                { "agents", "AGENTS" }, { "created_at", "CREATED" } }) end end,
  features = function(c)
    local edits = {}
    for i = 2, #c.pos do edits[#edits + 1] = c.pos[i] end
    return "tenant.features", { tenant = c.pos[1] or c.opts.tenant, edits = edits }, function(r)
      return ("tenant %s features: %s\n"):format(r.tenant, cell(r.features)) end
  end,
}

local function split_groups(s)
  local out = {}
  if not s then return out end
  for g in s:gmatch("[^,]+") do
    g = g:match("^%s*(.-)%s*$")
    if g ~= "" then out[#out + 1] = g end
  end
  return out
end

admin.agent = {
  add = function(c)
    return "agent.add", { tenant = c.opts.tenant, name = c.opts.name or c.pos[1], type = c.opts.type,
      groups = split_groups(c.opts.groups), default_tier = c.opts.tier,
      trusted_sender = c.opts["trusted-sender"] == true }, function(r)
      return ("agent %s added to tenant %s (%s)\ntoken: %s\n"):format(r.name, r.tenant, r.type, r.token)
        .. "The token is shown only now: give it to the agent as SWITCHBOARD_TOKEN.\n" end
  end,
  list = function(c) return "agent.list", { tenant = c.opts.tenant }, function(r)
    return M.table(r.agents, AGENT_COLS) end end,
  revoke = function(c) return "agent.revoke", { tenant = c.opts.tenant, agent = c.pos[1] }, function(r)
    return ("agent %s of tenant %s revoked; its connections were closed\n"):format(r.name, r.tenant) end end,
  groups = function(c)
    local edits = {}
    for i = 2, #c.pos do edits[#edits + 1] = c.pos[i] end
    return "agent.groups", { tenant = c.opts.tenant, agent = c.pos[1], edits = edits }, function(r)
      return ("agent %s groups: %s\n"):format(r.agent, cell(r.groups)) end
  end,
}

admin.reload = function() return "server.reload", {}, function(r)
  return ("reloaded: %d tools; policies %s\n"):format(r.tools, cell(r.policies)) end end
admin.status = function() return "server.status", {}, function(r)
  return M.fields(r, { { "connections", "connections" }, { "inflight", "calls in flight" },
                       { "tools", "tools" }, { "policies", "policies" } }) end end

admin.backup = function(c)
  local path = c.pos[1]
  if path:sub(1, 1) ~= "/" then path = require("lfs").currentdir() .. "/" .. path end
  return "server.backup", { path = path }, function(r)
    return ("backup written to %s (%d pages, %d audit records) and its anchor to %s, mode 0600;"
      .. " keep the master key with them\n"):format(r.path, r.pages, r.records, r.anchor)
  end
end

admin.sends = function(c)
  return "sends.daily", { tenant = c.opts.tenant, days = c.opts.days }, function(r)
    local rows = {}
    for i, d in ipairs(r.per_day) do
      local o, dl = {}, {}
      for k, n in pairs(d.outcomes) do o[#o + 1] = ("%s %d"):format(k, n) end
      for k, n in pairs(d.deliveries) do dl[#dl + 1] = ("%s %d"):format(k, n) end
      table.sort(o)
      table.sort(dl)
      rows[i] = { day = d.day, total = d.total, outcomes = table.concat(o, ", "), deliveries = table.concat(dl, ", ") }
    end
    return M.table(rows, { { "day", "DAY" }, { "total", "SENDS" }, { "outcomes", "OUTCOME" },
      { "deliveries", "DELIVERY" } })
  end
end

admin["console-link"] = function(c)
  return "console.link", { tenant = c.opts.tenant }, function(r)
    return ("%s\n(one-time %s login%s, valid until %s; open it in a browser on a trusted machine)\n"):format(r.url,
      r.scope, r.tenant and (" for tenant " .. r.tenant) or "", r.expires_at)
  end
end

admin.vault = {
  rotate = function() return "vault.rotate", {}, function(r)
    local out = { ("master key version %d is the primary (versions held: %s); %d tenant data key%s rewrapped\n")
      :format(r.version, cell(r.versions), r.rewrapped, r.rewrapped == 1 and "" or "s") }
    for _, l in ipairs(r.leftovers) do
      out[#out + 1] = ("leftover: tenant %s is still on key version %s (see the server log)\n"):format(l.tenant,
        tostring(l.version))
    end
    if #r.leftovers == 0 then
      out[#out + 1] = ("no tenant is left on version %d: `switchboard admin vault retire %d` removes it\n")
        :format(r.previous, r.previous)
    end
    return table.concat(out)
  end end,
  retire = function(c)
    return "vault.retire", { version = tonumber(c.pos[1]) or c.pos[1] }, function(r)
      return ("master key version %d retired: removed from the key file and from memory (versions held: %s)\n")
        :format(r.retired, cell(r.versions))
    end
  end,
}

-- The API key secret: from standard input, or a prompt without echo on a
-- terminal. Never from argv or the environment.
local function read_secret()
  local tty = os.execute("test -t 0")
  if tty then
    io.stderr:write("API key secret (input hidden): ")
    os.execute("stty -echo 2>/dev/null")
    local s = io.stdin:read("l")
    os.execute("stty echo 2>/dev/null")
    io.stderr:write("\n")
    return s
  end
  return io.stdin:read("l")
end
M.read_secret = read_secret

-- A cell of a table: one line, at most width characters.
local function cut(s, width)
  s = printable((tostring(s or ""):gsub("%s+", " ")))
  if (utf8.len(s) or #s) <= width then return s end
  return s:sub(1, utf8.offset(s, width - 1) - 1) .. "…"
end
M.cut = cut

local ESC_COLS = { { "id", "ID" }, { "agent", "AGENT" }, { "tool", "TOOL" }, { "action", "ACTION" },
  { "kind", "KIND" }, { "policy", "POLICY" }, { "reason", "REASON" }, { "status", "STATUS" },
  { "created_at", "CREATED" } }

local function escalation_text(r)
  local out = M.fields(r, { { "id", "escalation" }, { "tenant", "tenant" }, { "agent", "agent" },
    { "sender_tier", "sender tier" }, { "tool", "tool" }, { "action", "action" }, { "kind", "kind" },
    { "policy", "policy" }, { "reason", "reason" }, { "status", "status" }, { "decided_by", "decided by" },
    { "decided_at", "decided at" }, { "note", "note" }, { "created_at", "created" } })
  out = out .. "arguments:       " .. json.encode(r.arguments or {}) .. "\n"
  if r.result then
    out = out .. ("result:          %s%s\n"):format(r.result.is_error and "error: " or "", r.result.text or "")
  end
  return out
end

admin.escalations = function(c)
  return "escalations.list", { tenant = c.opts.tenant, status = c.opts.status, limit = c.opts.limit,
    after = c.opts.after }, function(r, later)
    return M.table(r.escalations, ESC_COLS, later) end, true
end

admin.escalation = {
  show = function(c) return "escalation.show", { tenant = c.opts.tenant, id = c.pos[1] }, escalation_text end,
  approve = function(c) return "escalation.approve", { tenant = c.opts.tenant, id = c.pos[1] }, function(r)
    return "approved and run once\n" .. escalation_text(r) end end,
  reject = function(c) return "escalation.reject", { tenant = c.opts.tenant, id = c.pos[1], reason = c.opts.reason },
    function(r) return "rejected\n" .. escalation_text(r) end end,
}

admin.executions = function(c)
  return "executions.list", { tenant = c.opts.tenant, days = c.opts.days, limit = c.opts.limit,
    after = c.opts.after }, function(r, later)
    local lines = {}
    for _, e in ipairs(r.executions) do
      lines[#lines + 1] = ("%s  agent %s  %s .. %s"):format(e.id, tostring(e.agent), e.started_at, e.ended_at)
      if e.more_calls then lines[#lines + 1] = "    … (earlier calls: execution show)" end
      for _, call in ipairs(e.calls) do
        lines[#lines + 1] = ("    %-26s %-14s %8.1f ms  %s"):format(call.tool, call.action or "-",
          call.duration_ms or 0, call.outcome)
      end
    end
    if #lines == 0 then
      if later then return "" end
      lines[1] = r.days and ("no executions in the last %d days"):format(r.days) or "no more executions"
    end
    return table.concat(lines, "\n") .. "\n"
  end, true
end

admin.execution = {
  show = function(c) return "execution.show", { tenant = c.opts.tenant, id = c.pos[1], agent = c.opts.agent,
    limit = c.opts.limit, after = c.opts.after }, function(r, later)
    local lines = { not later and ("execution %s (tenant %s, agent %s)"):format(r.id, r.tenant, tostring(r.agent)) or nil }
    for _, call in ipairs(r.calls) do
      lines[#lines + 1] = ("#%d %s %s %s: %s / %s, %.1f ms, tier %s, policies %s"):format(call.id, call.at, call.tool,
        call.action or "-", call.decision, call.outcome, call.duration_ms or 0, call.sender_tier or "-",
        table.concat(call.policies or {}, ","))
      lines[#lines + 1] = "    params: " .. json.encode(call.params or {})
      if call.detail then lines[#lines + 1] = "    detail: " .. json.encode(call.detail) end
    end
    if #lines == 0 then return "" end
    return table.concat(lines, "\n") .. "\n"
  end, true end,
}

admin.audit = {
  verify = function(c) return "audit.verify", { full = c.opts.full == true }, function(r)
    if not r.ok then
      return ("AUDIT TRAIL BROKEN%s: %s\n"):format(r.id and (" at record " .. r.id) or "", r.problem)
    end
    local out = { ("audit trail intact: %d records%s%s%s\n"):format(r.records,
      (r.legacy or 0) > 0 and (", %d from before the chain was keyed (plain SHA-256)"):format(r.legacy) or "",
      (r.unanchored or 0) > 0 and ("; the last %d not yet anchored (written just before a crash)"):format(r.unanchored)
        or "",
      (r.from or 0) > 0 and ("; %d checked since the last verify (record %d; --full walks them all)"):format(
        r.checked or 0, r.from) or "") }
    for _, w in ipairs(r.warnings or {}) do out[#out + 1] = "warning: " .. w .. "\n" end
    for _, w in ipairs(r.notes or {}) do out[#out + 1] = "note: " .. w .. "\n" end
    return table.concat(out)
  end end,
  settings = function(c)
    return "audit.settings", { tenant = c.opts.tenant, limit = c.opts.limit, after = c.opts.after }, function(r, later)
      local rows = {}
      for i, x in ipairs(r.changes) do
        rows[i] = { id = x.id, at = x.at, actor = x.actor, action = x.action,
                    old = json.encode(x.old), new = json.encode(x.new) }
      end
      return M.table(rows, { { "id", "ID" }, { "at", "TIME" }, { "actor", "WHO" }, { "action", "CHANGE" },
        { "old", "OLD" }, { "new", "NEW" } }, later)
    end, true
  end,
}

-- The admin commands for the parser: noun, summary, and its verbs (or,
-- for a noun without verbs, its own arguments). args: positional names,
-- "NAME?" optional, "EDITS*" any number; opts: option names (OPTS).
local OPTS = {
  tenant = { "T", "The tenant." },
  name = { "N", "The agent's name." },
  type = { "TYPE", "caioo or personal_assistant." },
  groups = { '"G1,G2"', "Tool groups, comma-separated." },
  tier = { "TIER", "Default sender tier: owner, admin, vip, internal or external (default external)." },
  ["trusted-sender"] = { false, "The agent may state the sender tier per call." },
  confirm = { false, "Confirm turning autonomous sends on without a prompt." },
  status = { "STATUS", "open, approved, rejected or all." },
  reason = { "TEXT", "Why (kept with the decision)." },
  days = { "N", "Lookback in days (executions: default 7, at most 30; sends: default 30, at most 90)." },
  start = { "YYYY-MM-DD", "The period's first day (default the first of this month)." },
  ["end"] = { "YYYY-MM-DD", "The period's last day (default today)." },
  agent = { "A", "The agent whose execution it is (when two agents chose the same id)." },
  limit = { "N", "Items per page (with --json one page is printed, with its cursor as 'next')." },
  after = { "CURSOR", "Start after this cursor (a page's 'next')." },
  full = { false, "Walk the whole trail, not only the records since the last verify." },
}
local ADMIN_FLAGS = { json = true, confirm = true, ["trusted-sender"] = true, full = true }
M.ADMIN_FLAGS = ADMIN_FLAGS

local ADMIN_SPEC = {
  { "tenant", "Tenants and their features.", {
    { "add", "Add a tenant.", args = { "NAME" } },
    { "list", "List the tenants." },
    { "features", "Show or edit a tenant's features: +code adds, -code removes.",
      args = { "NAME?", "EDITS*" }, opts = { "tenant" } },
  } },
  { "agent", "Agents and their tokens.", {
    { "add", "Add an agent; prints its token once.", args = { "NAME?" },
      opts = { "tenant", "name", "type", "groups", "tier", "trusted-sender" } },
    { "list", "List agents (of one tenant with --tenant).", opts = { "tenant" } },
    { "revoke", "Revoke an agent; closes its connections.", args = { "NAME" }, opts = { "tenant" } },
    { "groups", 'Show or edit an agent\'s tool groups: +"Group" adds, -"Group" removes.',
      args = { "NAME", "EDITS*" }, opts = { "tenant" } },
  } },
  { "reload", "Reload tools and policies." },
  { "status", "Connections, calls in flight, tools and policies." },
  { "backup", "Copy the database into the new file FILE (mode 0600) while serving.", args = { "FILE" } },
  { "escalations", "List escalations.", opts = { "tenant", "status", "limit", "after" } },
  { "escalation", "One escalation.", {
    { "show", "Show an escalation.", args = { "ID" }, opts = { "tenant" } },
    { "approve", "Approve an escalation and run the call once.", args = { "ID" }, opts = { "tenant" } },
    { "reject", "Reject an escalation.", args = { "ID" }, opts = { "tenant", "reason" } },
  } },
  { "executions", "Executions and their calls.", opts = { "tenant", "days", "limit", "after" } },
  { "execution", "One execution.", {
    { "show", "Show an execution's calls.", args = { "ID" }, opts = { "tenant", "agent", "limit", "after" } },
  } },
  { "sends", "A tenant's sends per day by outcome and delivery.", opts = { "tenant", "days" } },
  { "console-link", "Print a one-time login link to the console (--tenant: for that tenant's administrator).",
    opts = { "tenant" } },
  { "vault", "The master key's versions.", {
    { "rotate", "Add a master key version and rewrap every tenant's data key under it; reports leftovers." },
    { "retire", "Remove the master key version VERSION once no data key is wrapped under it.",
      args = { "VERSION" } },
  } },
  { "audit", "The audit trail.", {
    { "verify", "Verify the audit trail (the records since the last verify; --full: all of it).",
      opts = { "full" } },
    { "settings", "Changes of settings.", opts = { "tenant", "limit", "after" } },
  } },
}

M.ADMIN_SPEC = ADMIN_SPEC

-- {======================================================
-- Each integration package's noun: its CLI verbs (integrations/<name>/
-- cli.lua: summary, opts, verbs with run(c, cli)) and the two every
-- integration has, autonomous-sends and disconnect.
-- =======================================================

local function generic_verbs(pkg)
  local name, title = pkg.name, pkg.title
  return {
    { "autonomous-sends", "Turn sends without a human's confirmation on or off.", args = { "VALUE" },
      opts = { "tenant", "confirm" }, run = function(c)
        local value = c.pos[1]
        local confirm = c.opts.confirm == true
        if value == "on" and not confirm and os.execute("test -t 0") then
          io.stderr:write(("WARNING: with autonomous sends on, agents send %s messages and codes that cost money\n"
            .. "without a human confirming each one. Type yes to turn it on: "):format(title))
          confirm = io.stdin:read("l") == "yes"
        end
        return name .. ".autonomous_sends", { tenant = c.opts.tenant, value = value, confirm = confirm }, function(r)
          local out = ("autonomous sends for %s: %s%s\n"):format(r.tenant, r.autonomous_sends and "ON" or "off",
            r.changed and "" or " (unchanged)")
          if r.autonomous_sends then
            out = out .. "WARNING: agents now send messages that cost money without human confirmation.\n"
          end
          return out
        end
      end },
    { "disconnect", "Remove the sealed key and the tool group.", args = { "TENANT?" }, opts = { "tenant" },
      run = function(c)
        return name .. ".disconnect", { tenant = c.opts.tenant or c.pos[1] }, function(r)
          return ("tenant %s disconnected from %s; the tool group was removed\n"):format(r.tenant, title)
        end
      end },
  }
end

local added = {}
-- Add the nouns of the discovered packages (discovering the built-in ones
-- when nothing was: a parser built without a configuration).
local function add_integrations(root)
  if #integrations.list() == 0 and root then integrations.load({ root .. "/integrations" }) end
  for _, pkg in ipairs(integrations.list()) do
    if not added[pkg.name] then
      added[pkg.name] = true
      local mod = pkg.manifest.cli and integrations.module(pkg, pkg.manifest.cli) or {}
      for k, v in pairs(mod.opts or {}) do
        if OPTS[k] == nil then OPTS[k] = v end
      end
      local verbs = {}
      for _, v in ipairs(mod.verbs or {}) do verbs[#verbs + 1] = v end
      for _, v in ipairs(generic_verbs(pkg)) do verbs[#verbs + 1] = v end
      local entries = {}
      for _, v in ipairs(verbs) do
        local run = v.run
        entries[v[1]] = function(c) return run(c, M) end
      end
      admin[pkg.name] = entries
      table.insert(ADMIN_SPEC, #ADMIN_SPEC, { pkg.name, mod.summary or ("A tenant's %s connection."):format(pkg.title),
        verbs })
    end
  end
end
M.add_integrations = add_integrations

-- }======================================================

-- Early exits of a parse (help, version) and its errors, raised as
-- tables so that nothing calls os.exit.
local Stop = {}
local function stop(t) error(setmetatable(t, Stop), 0) end

local function help_of(parser)
  parser:add_help({ action = function() stop({ help = parser:get_help() }) end })
  return parser
end

local function command(parent, name, summary)
  local c = parent:command(name):summary(summary):description(summary):target("cmd " .. name)
  return help_of(c)
end

local function config_option(c)
  c:option("--config", "The configuration file (default $SWITCHBOARD_CONFIG, else an installed"
    .. " SYSCONFDIR/switchboard/switchboard.conf.lua, else the defaults)."):argname("FILE")
end

local function add_verb(c, spec)
  for _, a in ipairs(spec.args or {}) do
    local name, count = a:match("^(%u+)([?*]?)$")
    local arg = c:argument(name):target("arg " .. name:lower())
    if count ~= "" then arg:args(count) end
  end
  for _, o in ipairs(spec.opts or {}) do
    local info = OPTS[o]
    if info[1] then
      c:option("--" .. o, info[2]):argname(info[1]):target(o)
    else
      c:flag("--" .. o, info[2]):target(o)
    end
  end
  c.sb_args = spec.args or {}
end

local function build_parser()
  add_integrations(M.root)
  local p = help_of(argparse("switchboard", "Switchboard: safe tools for AI agents over MCP."))
  p:flag("--version", "Print the version and exit."):action(function() stop({ version = true }) end)
  p:command_target("command")
  p:require_command(false)

  local serve = command(p, "serve", "Run the server: the agent and admin sockets.")
  config_option(serve)

  local admin_cmd = command(p, "admin", "Administer a running server over its admin socket.")
  config_option(admin_cmd)
  admin_cmd:flag("--json", "Print the answer as JSON."):target("json")
  admin_cmd:command_target("noun")
  for _, n in ipairs(ADMIN_SPEC) do
    local nc = command(admin_cmd, n[1], n[2])
    if n[3] then
      nc:command_target("verb")
      for _, v in ipairs(n[3]) do add_verb(command(nc, v[1], v[2]), v) end
    else
      add_verb(nc, n)
    end
  end

  local connect = command(p, "connect",
    "A stdio bridge for MCP clients: adds $SWITCHBOARD_TOKEN to initialize and relays both ways.")
  config_option(connect)
  connect:option("--socket", "The agent socket (default: the configuration's agent_socket)."):argname("PATH")

  -- these parse their own arguments
  local sim = command(p, "sim", "Run an integration's simulator: switchboard sim [INTEGRATION] … (--help for"
    .. " its options).")
  sim:add_help(false):handle_options(false)
  sim:argument("args"):args("*"):target("arg args")
  local exec = command(p, "exec", "Run a Lua file with the core modules (tests, benches).")
  exec:add_help(false):handle_options(false)
  exec:argument("file"):target("arg file")
  exec:argument("args"):args("*"):target("arg args")

  local restore = command(p, "restore",
    "With the server stopped: check a backup (schema, audit chain) and put it in place of the database.")
  config_option(restore)
  restore:argument("file", "The backup (from `switchboard admin backup`)."):target("arg file")

  command(p, "version", "Print the version.")
  return p
end
M.build_parser = build_parser

-- The value-taking options, to find the words of a command line.
local function valued()
  local v = { ["--config"] = true, ["--socket"] = true }
  for name, info in pairs(OPTS) do
    if info[1] then v["--" .. name] = true end
  end
  return v
end

-- `tenant features T -code` and `agent groups A -"Group"`: an edit that
-- starts with "-" is not an option; it moves behind "--".
local function edits_last(argv)
  local VALUED = valued()
  local words, i = {}, 1
  while i <= #argv and #words < 3 do
    local a = argv[i]
    if a == "--" then return argv end
    if a:sub(1, 1) == "-" then
      if VALUED[a] then i = i + 1 end
    else
      words[#words + 1] = a
    end
    i = i + 1
  end
  if not (words[1] == "admin" and ((words[2] == "tenant" and words[3] == "features")
      or (words[2] == "agent" and words[3] == "groups"))) then
    return argv
  end
  local out, edits = table.move(argv, 1, i - 1, 1, {}), {}
  while i <= #argv do
    local a = argv[i]
    if a == "--" then
      table.move(argv, i + 1, #argv, #edits + 1, edits)
      break
    elseif a:match("^%-[^%-]") and a ~= "-h" then
      edits[#edits + 1] = a
    else
      out[#out + 1] = a
      if VALUED[a] and argv[i + 1] then
        i = i + 1
        out[#out + 1] = argv[i]
      end
    end
    i = i + 1
  end
  if #edits == 0 then return out end
  out[#out + 1] = "--"
  return table.move(edits, 1, #edits, #out + 1, out)
end
M.edits_last = edits_last

-- Parse argv. Returns the result table, or nil and { help = text } /
-- { version = true } / { error = message, usage = text }.
function M.parse(argv)
  local p = build_parser()
  p.error = function(parser, msg) stop({ error = msg, usage = parser:get_usage() }) end
  local ok, res = pcall(p.parse, p, edits_last(argv))
  if ok then return res end
  if getmetatable(res) == Stop then return nil, res end
  error(res, 0)
end

-- The admin options and positionals of a parse, in the shape the verbs use.
local function admin_args(res, spec_args)
  local opts, pos = {}, {}
  for k, v in pairs(res) do
    if type(k) == "string" and not k:find(" ", 1, true) and k ~= "noun" and k ~= "verb" and k ~= "command" then
      opts[k] = v
    end
  end
  for _, a in ipairs(spec_args) do
    local v = res["arg " .. a:match("^%u+"):lower()]
    if type(v) == "table" then
      table.move(v, 1, #v, #pos + 1, pos)
    elseif v ~= nil then
      pos[#pos + 1] = v
    end
  end
  return opts, pos
end

local function admin_spec_args(noun, verb)
  for _, n in ipairs(ADMIN_SPEC) do
    if n[1] == noun then
      if not n[3] then return n.args or {} end
      for _, v in ipairs(n[3]) do
        if v[1] == verb then return v.args or {} end
      end
    end
  end
  return {}
end

function M.commands.admin(res, root)
  local opts, pos = admin_args(res, admin_spec_args(res.noun, res.verb))
  local entry = admin[res.noun]
  if type(entry) == "table" then entry = entry[res.verb] end
  local cfg, err = load_config(opts, root)
  if not cfg then return die(err, 2) end
  local c = { opts = opts, pos = pos, cfg = cfg }
  local method, params, printer, paged = entry(c)
  if not method then return die(params, 2) end
  if opts.json then
    -- one answer (one page, with its cursor as `next`)
    local result, rerr = run_async(function() return M.admin_call(cfg.admin_socket, method, params) end)
    if not result then
      io.stdout:write(json.encode({ error = rerr }), "\n")
      return die(rerr, 1)
    end
    io.stdout:write(json.encode(result), "\n")
    return result.ok == false and 1 or 0
  end
  local on_note
  if method == "audit.verify" and os.execute("test -t 2") then
    params.progress = true
    on_note = M.progress_printer(io.stderr)
  end
  -- for people: page after page, each printed as it comes
  local rc, later = 0, false
  local ok, rerr = run_async(function()
    while true do
      local result, cerr = M.admin_call(cfg.admin_socket, method, params, on_note)
      if on_note then on_note("done") end
      if not result then return nil, cerr end
      if not io.stdout:write(printable(printer(result, later), true)) then return true end
      io.stdout:flush()
      if result.ok == false then rc = 1 end
      if not (paged and type(result.next) == "string") then return true end
      params.after, later = result.next, true
    end
  end)
  if not ok then return die(rerr, 1) end
  return rc
end

-- Progress of an audit verify on a terminal: records checked of total,
-- rate, time left, on one line that the answer replaces.
function M.progress_text(p)
  local checked, total, elapsed = tonumber(p.checked) or 0, tonumber(p.total) or 0, tonumber(p.elapsed) or 0
  local rate = elapsed > 0 and checked / elapsed or 0
  local left = rate > 0 and (total - checked) / rate or nil
  return ("verifying: %d of %d records (%d%%), %d records/s, %s left"):format(checked, total,
    total > 0 and checked * 100 // total or 100, math.floor(rate),
    left and ("%d s"):format(math.ceil(left)) or "? s")
end

function M.progress_printer(out)
  local shown = false
  return function(method, p)
    if method == "done" then
      if shown then out:write("\r\27[K") end
      shown = false
    elseif method == "audit.verify/progress" and type(p) == "table" then
      out:write("\r\27[K", M.progress_text(p))
      out:flush()
      shown = true
    end
  end
end

-- `switchboard restore FILE`: offline (switchboard.backup.restore).
function M.commands.restore(res, root)
  local cfg, err = load_config(res, root)
  if not cfg then return die(err, 2) end
  local server = require("switchboard.server")
  local function open_master(c)
    local fixed = setmetatable({ create_master_key = false }, { __index = c })
    return server.open_master(fixed)
  end
  local r, rerr = run_async(function()
    return require("switchboard.backup").restore(cfg, res["arg file"], open_master,
      os.getenv("USER") or os.getenv("LOGNAME"))
  end)
  if not r then return die("restore refused: " .. rerr, 1) end
  local out = { ("restored %s from %s: schema version %d, %d audit records, audit trail intact\n")
    :format(r.database, res["arg file"], r.schema_version, r.records) }
  if r.kept_database then out[#out + 1] = ("the database it replaced is kept as %s\n"):format(r.kept_database) end
  if r.kept_anchor then out[#out + 1] = ("the audit anchor it replaced is kept as %s\n"):format(r.kept_anchor) end
  for _, w in ipairs(r.warnings or {}) do out[#out + 1] = "note: " .. w .. "\n" end
  io.stdout:write(printable(table.concat(out), true))
  return 0
end

-- `switchboard sim [INTEGRATION] …`: an integration package's simulator
-- (its manifest's `sim` module, with commands.sim(args, root)); without a
-- name, the first package that has one.
function M.commands.sim(args, root)
  local pkg = args[1] and integrations.get(args[1])
  if pkg and pkg.manifest.sim then
    args = table.move(args, 2, #args, 1, {})
  else
    pkg = nil
    for _, p in ipairs(integrations.list()) do
      if p.manifest.sim then pkg = p break end
    end
  end
  if not pkg then
    io.stderr:write("switchboard sim: no installed integration has a simulator\n")
    return 2
  end
  local mod, err = integrations.module(pkg, pkg.manifest.sim)
  if not mod then return die(err, 2) end
  return mod.commands.sim(args, root)
end

-- `switchboard exec FILE [ARGS...]`: runs a Lua file with the core modules
-- available (tests, benches, busted), with arg as the standalone
-- interpreter sets it.
function M.commands.exec(args)
  local file = args[1]
  local script_arg = { [0] = file }
  for i = 2, #args do script_arg[i - 1] = args[i] end
  _G.arg = script_arg -- luacheck: ignore 122
  local chunk, err = loadfile(file)
  if not chunk then
    io.stderr:write(err, "\n")
    return 1
  end
  local rc = chunk(table.unpack(script_arg))
  return math.type(rc) == "integer" and rc or 0
end

function M.commands.version()
  io.stdout:write("switchboard ", M.VERSION, " (", _VERSION, ")\n")
  return 0
end

-- `switchboard connect`: a stdio bridge for MCP clients that launch a
-- command. Adds the agent token from SWITCHBOARD_TOKEN to initialize and
-- relays bytes both ways.
function M.commands.connect(opts, root)
  local path = opts.socket
  if not path then
    local cfg, cerr = load_config(opts, root)
    if not cfg then return die(cerr, 2) end
    path = cfg.agent_socket
  end
  local token = os.getenv("SWITCHBOARD_TOKEN")
  if not token or token == "" then
    io.stderr:write("switchboard connect: SWITCHBOARD_TOKEN is not set; the server will refuse initialize\n")
  end
  local rc = 0
  loop.spawn(function()
    local sock, serr = loop.connect(path)
    if not sock then
      io.stderr:write(("switchboard connect: %s: %s\n"):format(path, serr))
      rc = 1
      loop.stop()
      return
    end
    local stdin, stdout = loop.stream(0), loop.stream(1)
    local done = false
    local function finish()
      if done then return end
      done = true
      stdout:flush(5)
      sock:close()
      loop.stop()
    end
    loop.spawn(function()
      while true do
        local data = sock:read_some(65536)
        if not data then break end
        if not stdout:write(data) then break end
      end
      finish()
    end)
    local injected = false
    while true do
      local line = stdin:read_line(64 * 1048576)
      if not line then break end
      -- the token goes into initialize and into each 2026-07-28 request
      -- (stateless: its version in _meta, no initialize)
      if token and token ~= "" and line:find("protocolVersion", 1, true) then
        local msg = json.decode(line)
        local params = type(msg) == "table" and msg.id ~= nil and msg.params
        local modern = type(params) == "table" and type(params._meta) == "table"
          and params._meta["io.modelcontextprotocol/protocolVersion"] ~= nil
        if modern or (not injected and type(params) == "table" and msg.method == "initialize") then
          local meta = type(msg.params._meta) == "table" and msg.params._meta or {}
          meta["io.switchboard/token"] = token
          msg.params._meta = meta
          line = json.encode(msg)
          if msg.method == "initialize" then injected = true end
        end
      end
      if not sock:write(line .. "\n") then break end
    end
    sock:flush(5)
    -- the client closed its side: give the server a moment for last answers
    loop.sleep(0.05)
    finish()
  end)
  loop.run()
  return rc
end

-- The entry point (runtime.lua): argv without the program name. Returns
-- the exit status: 2 for a command line the parser refuses.
-- Discover the integration packages before parsing (their nouns are
-- commands): from the configuration the command line, $SWITCHBOARD_CONFIG
-- or the installed file names, else the built-in directory.
local function discover(argv, root)
  local path
  for i, a in ipairs(argv) do
    if a == "--config" then path = argv[i + 1] elseif a:sub(1, 9) == "--config=" then path = a:sub(10) end
  end
  path = path or os.getenv("SWITCHBOARD_CONFIG") or installed_config(root)
  if not (path and config.load(path, root)) then integrations.load({ root .. "/integrations" }) end
end

function M.main(argv, root)
  argv = argv or {}
  M.root = root
  if argv[1] ~= "exec" then discover(argv, root) end
  if argv[1] == "help" then
    -- `switchboard help [COMMAND...]` is `switchboard [COMMAND...] --help`
    argv = table.move(argv, 2, #argv, 1, {})
    argv[#argv + 1] = "--help"
  end
  local res, early = M.parse(argv)
  if not res then
    if early.help then
      io.stdout:write(early.help, "\n")
      return 0
    elseif early.version then
      return M.commands.version()
    end
    io.stderr:write(early.usage, "\n\nswitchboard: ", printable(early.error, true), "\n")
    return 2
  end
  local cmd = res.command
  if cmd == nil then
    io.stdout:write(build_parser():get_help(), "\n")
    return 0
  end
  if cmd == "exec" and (argv[2] == "-h" or argv[2] == "--help") then
    io.stdout:write("Usage: switchboard exec <file> [<args>] ...\n\n"
      .. "Run a Lua file with the core modules (tests, benches); the arguments after it are the file's own.\n")
    return 0
  end
  if cmd == "sim" or cmd == "exec" then
    -- their own arguments, verbatim
    return M.commands[cmd](table.move(argv, 2, #argv, 1, {}), root)
  end
  return M.commands[cmd](res, root)
end

return M
