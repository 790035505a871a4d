-- The tool registry: loads tool files (each integration package's tools/
-- and the configured tool_dirs), checks each definition, and answers which tools an agent's
-- groups let it see. A reload builds a new registry; a broken file leaves
-- the previous one in force.
local lfs = require("lfs")
local json = require("switchboard.json")
local schema = require("switchboard.schema")
local vault = require("core.vault")
local directory = require("switchboard.directory")
local integrations = require("switchboard.integrations")

local M = {}
M.__index = M

local annotation_keys = { title = "string", readOnlyHint = "boolean", destructiveHint = "boolean",
                          idempotentHint = "boolean", openWorldHint = "boolean" }
local known_fields = { name = true, title = true, description = true, group = true,
                       input_schema = true, output_schema = true, annotations = true,
                       writes = true, handler = true, check = true, timeout = true,
                       instructions = true, connection = true, untrusted = true, sends = true,
                       actions = true }

-- What the pipeline itself puts in structuredContent, whatever the tool
-- (an error the handler returned, a call held or escalated): every
-- exported outputSchema accepts these beside the tool's own result.
M.PIPELINE_RESULTS = {
  { type = "object", description = "The tool failed (isError): what failed, and what the tool adds about it.",
    properties = {
      error = { type = "object", additionalProperties = false, required = { "message" },
                properties = { message = { type = "string" },
                               code = { anyOf = { { type = "integer" }, { type = "string" } } },
                               hint = { type = "string" }, more_info = { type = "string" } } },
    },
    required = { "error" } },
  { type = "object", description = "The call was held or escalated for human review (isError).",
    properties = { escalation_id = { type = "integer" },
                   status = { type = "string", enum = { "held", "escalated" } } },
    required = { "escalation_id", "status" }, additionalProperties = false },
  { type = "object", description = "The call was held or escalated, but the escalation could not be stored (isError).",
    properties = { status = { type = "string", const = "not_stored" } },
    required = { "status" }, additionalProperties = false },
}

-- The tool's output schema with the pipeline's results beside it.
local function with_pipeline_results(s)
  local own = {}
  for k, v in pairs(s) do
    if k ~= "$defs" and k ~= "$schema" then own[k] = v end
  end
  local alts = { own }
  for _, r in ipairs(M.PIPELINE_RESULTS) do alts[#alts + 1] = r end
  return { type = "object", anyOf = alts, ["$defs"] = s["$defs"],
           description = "The tool's result; when isError is set, one of the error shapes after it." }
end

-- Text an agent reads must be plain: no control or invisible characters.
local function plain_text(s)
  if s:find("[%z\1-\8\11-\31\127]") then return false end
  for _, cp in utf8.codes(s) do
    if (cp >= 0x200B and cp <= 0x200F) or (cp >= 0x202A and cp <= 0x202E)
      or (cp >= 0x2060 and cp <= 0x2064) or cp == 0xFEFF or (cp >= 0xE0000 and cp <= 0xE007F) then
      return false
    end
  end
  return true
end

-- `untrusted`: the result fields that carry third-party text (see
-- switchboard.taint); each path must name a field of the outputSchema.
-- Does the output schema have this field path ("a.b", "list[].c")? It
-- follows local $refs into $defs and tries each oneOf/anyOf alternative.
local function has_path(root, node, steps, i, depth)
  if type(node) ~= "table" or depth > 32 then return false end
  if type(node["$ref"]) == "string" then
    local name = node["$ref"]:match("^#/%$defs/(.+)$")
    return has_path(root, name and root["$defs"] and root["$defs"][name], steps, i, depth + 1)
  end
  for _, key in ipairs({ "oneOf", "anyOf" }) do
    for _, alt in ipairs(node[key] or {}) do
      if has_path(root, alt, steps, i, depth + 1) then return true end
    end
  end
  local step = steps[i]
  if not step then return true end
  local child = node.properties and node.properties[step.name]
  if child and step.list then
    -- the list's items, possibly behind a $ref
    while type(child) == "table" and child["$ref"] and depth < 32 do
      local name = child["$ref"]:match("^#/%$defs/(.+)$")
      child, depth = name and root["$defs"] and root["$defs"][name], depth + 1
    end
    child = type(child) == "table" and child.items
  end
  return child ~= nil and has_path(root, child, steps, i + 1, depth + 1)
end

local function check_untrusted(def)
  if def.untrusted == nil then return true end
  local ok, err = require("switchboard.taint").check_declaration(def.untrusted)
  if not ok then return nil, err end
  for i, e in ipairs(def.untrusted) do
    local path = type(e) == "string" and e or e[1]
    local steps = {}
    for name, list in path:gmatch("([%w_]+)(%[?%]?)") do steps[#steps + 1] = { name = name, list = list == "[]" } end
    if not has_path(def.output_schema, def.output_schema, steps, 1, 0) then
      return nil, ("untrusted[%d]: '%s' is not a field of the output_schema"):format(i, path)
    end
  end
  return true
end

-- `sends`: what a write tool sends, { recipient = "<argument>", texts = {
-- "<argument>" | { "<argument>", "label", map = true } … } }; the pipeline
-- hands policies call.recipient and call.outbound from it, and ctx.send
-- records the send to that recipient. It applies to the calls that write.
-- `at` is where it is declared ("sends", "actions.<name>.sends"), `props`
-- the arguments it may name, `whose` says whose arguments they are.
local function check_sends(s, writes, props, at, whose)
  if s == nil then return true end
  if type(s) ~= "table" then return nil, at .. ": must be a table { recipient = …, texts = { … } }" end
  for k in pairs(s) do
    if k ~= "recipient" and k ~= "texts" then return nil, ("%s.%s: unknown field"):format(at, tostring(k)) end
  end
  if writes == false then
    return nil, at .. (whose == "input_schema" and ": a tool that does not write sends nothing"
      or ": an action that does not write sends nothing")
  end
  if type(s.recipient) ~= "string" or not props[s.recipient] then
    return nil, ("%s.recipient: must name an argument of the %s"):format(at, whose)
  end
  if s.texts ~= nil and type(s.texts) ~= "table" then return nil, at .. ".texts: must be a list" end
  for i, t in ipairs(s.texts or {}) do
    local field = type(t) == "table" and t[1] or t
    if type(field) ~= "string" or not props[field] then
      return nil, ("%s.texts[%d]: must name an argument of the %s"):format(at, i, whose)
    end
    if type(t) == "table" and t[2] ~= nil and type(t[2]) ~= "string" then
      return nil, ("%s.texts[%d]: the label must be a string"):format(at, i)
    end
  end
  return true
end

-- Two values (schemas) with the same content?
local function same(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

-- "a", "a and b", "a, b and c" (conj "or": "a, b or c"); quoted with quote
local function list_names(names, conj, quote)
  local q = {}
  for i, n in ipairs(names) do q[i] = quote and ("%q"):format(n) or n end
  if #q == 1 then return q[1] end
  return table.concat(q, ", ", 1, #q - 1) .. " " .. (conj or "and") .. " " .. q[#q]
end

-- `actions`: a tool of several actions declares each one, { description?,
-- schema = { properties = {…}, required = {…} }, writes = bool, sends?,
-- handler = function(ctx, args) }. The registry composes the tool's
-- input_schema (an `action` enum of the sorted names, the union of the
-- actions' properties, additionalProperties false, required "action" and
-- what every action requires), its writes (the actions that write) and
-- its sends (per action); M.check_action refuses, per call, an argument
-- the chosen action does not take or one it requires. Returns the parsed
-- actions and the input_schema, or nil, "field: rule".
local action_fields = { description = true, schema = true, writes = true, sends = true, handler = true }
local function compose_actions(def)
  for _, k in ipairs({ "input_schema", "handler", "writes", "sends" }) do
    if def[k] ~= nil then
      return nil, ("%s: a tool with actions declares it per action (actions.<name>.%s)"):format(k,
        k == "input_schema" and "schema" or k)
    end
  end
  if type(def.actions) ~= "table" or next(def.actions) == nil then
    return nil, "actions: must be a table of action name = { schema, writes, handler }"
  end
  local names = {}
  for name in pairs(def.actions) do
    if type(name) ~= "string" or not name:match("^[%a][%w_%-]*$") or #name > 64 then
      return nil, ("actions: the action name %s must be 1-64 letters, digits, '_' or '-', starting with a letter")
        :format(type(name) == "string" and ("%q"):format(name) or "[" .. tostring(name) .. "]")
    end
    names[#names + 1] = name
  end
  table.sort(names)
  local default_writes = not (type(def.annotations) == "table" and def.annotations.readOnlyHint == true)
  local actions, union, owner, descs = {}, {}, {}, {}
  for _, name in ipairs(names) do
    local a, at = def.actions[name], "actions." .. name
    if type(a) ~= "table" then return nil, at .. ": must be a table { schema, writes, handler }" end
    for k in pairs(a) do
      if not action_fields[k] then return nil, ("%s.%s: unknown field"):format(at, tostring(k)) end
    end
    if a.description ~= nil then
      if type(a.description) ~= "string" or #a.description == 0 or not utf8.len(a.description)
        or not plain_text(a.description) then
        return nil, at .. ".description: must be a non-empty plain text string"
      end
    end
    local s = a.schema or {}
    if type(s) ~= "table" then return nil, at .. ".schema: must be a table { properties = {…}, required = {…} }" end
    for k in pairs(s) do
      if k ~= "properties" and k ~= "required" then
        return nil, ("%s.schema.%s: unknown field (an action's schema has properties and required)"):format(at,
          tostring(k))
      end
    end
    local props = s.properties or {}
    if type(props) ~= "table" then return nil, at .. ".schema.properties: must be a table" end
    if props.action ~= nil then
      return nil, at .. ".schema.properties.action: `action` is the tool's own argument (the action's name)"
    end
    local ok, err = schema.check_definition({ type = "object", properties = props, required = s.required },
      at .. ".schema")
    if not ok then return nil, err end
    local required = {}
    for _, r in ipairs(s.required or {}) do required[r] = true end
    for p, ps in pairs(props) do
      if union[p] ~= nil and not same(union[p], ps) then
        return nil, ("%s.schema.properties.%s: differs from the property %s of action %q (actions that share an"
          .. " argument give it the same schema)"):format(at, p, p, owner[p])
      end
      union[p], owner[p] = ps, owner[p] or name
    end
    local writes = a.writes
    if writes == nil then writes = default_writes end
    if type(writes) ~= "boolean" then return nil, at .. ".writes: must be true or false" end
    if writes and not default_writes then
      return nil, at .. ".writes: a tool with readOnlyHint = true cannot write"
    end
    if type(a.handler) ~= "function" then return nil, at .. ".handler: must be a function(ctx, args)" end
    ok, err = check_sends(a.sends, writes, props, at .. ".sends", "action")
    if not ok then return nil, err end
    actions[name] = { name = name, properties = props, required = required, required_list = s.required or {},
                      writes = writes, sends = a.sends, handler = a.handler, description = a.description }
    if a.description then
      descs[#descs + 1] = name .. ": " .. a.description .. (a.description:find("[%.!?]$") and "" or ".")
    end
  end
  -- what every action requires, the schema says for all
  local common = {}
  for p in pairs(union) do
    local all = true
    for _, name in ipairs(names) do all = all and actions[name].required[p] == true end
    if all then common[#common + 1] = p end
  end
  table.sort(common)
  table.insert(common, 1, "action")
  local properties = { action = { type = "string", enum = names,
    description = #descs > 0 and table.concat(descs, " ") or (list_names(names, "or") .. ".") } }
  for p, ps in pairs(union) do properties[p] = ps end
  return actions, { type = "object", properties = properties, required = common, additionalProperties = false }
end

-- Check one definition; returns the tool or nil, "field: rule".
function M.check(def)
  if type(def) ~= "table" then return nil, "the file must return a table" end
  for k in pairs(def) do
    if not known_fields[k] then return nil, ("unknown field '%s'"):format(tostring(k)) end
  end
  if type(def.name) ~= "string" or not def.name:match("^[%w_%.%-]+$") or #def.name > 128 then
    return nil, "name: must be 1-128 characters of letters, digits, '_', '.' or '-'"
  end
  if type(def.description) ~= "string" or #def.description == 0 or #def.description > 4096 then
    return nil, "description: must be a non-empty string of at most 4096 bytes"
  end
  if not utf8.len(def.description) or not plain_text(def.description) then
    return nil, "description: must be plain UTF-8 text without control or invisible characters"
  end
  if def.title ~= nil and (type(def.title) ~= "string" or not plain_text(def.title)) then
    return nil, "title: must be plain text"
  end
  if type(def.group) ~= "string" or #def.group == 0 then
    return nil, "group: must name the tool group"
  end
  local actions, input_schema = nil, def.input_schema
  if def.actions ~= nil then
    actions, input_schema = compose_actions(def)
    if not actions then return nil, input_schema end
  end
  local ok, err = schema.check_definition(input_schema, "input_schema")
  if not ok then return nil, err end
  if def.output_schema ~= nil then
    ok, err = schema.check_definition(def.output_schema, "output_schema")
    if not ok then return nil, err end
  end
  if type(def.annotations) ~= "table" then
    return nil, "annotations: required (at least readOnlyHint)"
  end
  for k, v in pairs(def.annotations) do
    if not annotation_keys[k] then return nil, ("annotations.%s: unknown annotation"):format(tostring(k)) end
    if type(v) ~= annotation_keys[k] then
      return nil, ("annotations.%s: must be a %s"):format(k, annotation_keys[k])
    end
  end
  if type(def.annotations.readOnlyHint) ~= "boolean" then
    return nil, "annotations.readOnlyHint: must be set to true or false"
  end
  local writes = def.writes
  if writes == nil then writes = not def.annotations.readOnlyHint end
  if actions then
    -- the actions that write: all, none, or the set of them
    local set, all, none = {}, true, true
    for name, a in pairs(actions) do
      set[name] = a.writes or nil
      all, none = all and a.writes, none and not a.writes
    end
    writes = all or (not none and set)
  elseif type(writes) == "table" then
    local set = {}
    for i, a in ipairs(writes) do
      if type(a) ~= "string" then return nil, ("writes[%d]: must be an action name"):format(i) end
      set[a] = true
    end
    writes = set
  elseif type(writes) ~= "boolean" then
    return nil, "writes: must be a boolean or a list of the actions that write"
  end
  if def.annotations.readOnlyHint and writes ~= false then
    return nil, "writes: a tool with readOnlyHint = true cannot write"
  end
  if not actions and type(def.handler) ~= "function" then return nil, "handler: must be a function(ctx, args)" end
  if def.check ~= nil and type(def.check) ~= "function" then
    return nil, "check: must be a function(args) returning true or nil, message"
  end
  if def.timeout ~= nil and (type(def.timeout) ~= "number" or def.timeout <= 0) then
    return nil, "timeout: must be a positive number of seconds"
  end
  if def.instructions ~= nil and type(def.instructions) ~= "string" then
    return nil, "instructions: must be a string"
  end
  if def.connection ~= nil and (type(def.connection) ~= "string" or not def.connection:match("^%l+$")) then
    return nil, "connection: must name an integration package"
  end
  ok, err = check_untrusted(def)
  if not ok then return nil, err end
  ok, err = check_sends(def.sends, writes, input_schema.properties or {}, "sends", "input_schema")
  if not ok then return nil, err end
  local tool = {}
  for k, v in pairs(def) do tool[k] = v end
  tool.actions, tool.input_schema = actions, input_schema
  tool.writes_spec = writes
  tool.exported = schema.export(input_schema)
  if def.output_schema then
    tool.result_schema = with_pipeline_results(def.output_schema)
    tool.exported_output = schema.export(tool.result_schema)
  end
  tool.fingerprint = vault.sha256_hex(json.encode({ def.name, def.title or "", def.description,
    def.group, tool.exported, tool.exported_output or "", def.annotations }))
  return tool
end

-- The chosen action of a tool with actions, or nil.
local function action_of(tool, args)
  return tool.actions and type(args) == "table" and type(args.action) == "string" and tool.actions[args.action]
    or nil
end

-- The send declaration of this call, or nil.
function M.sends(tool, args)
  if tool.actions then
    local a = action_of(tool, args)
    return a and a.writes and a.sends or nil
  end
  if tool.sends and M.writes(tool, args) then return tool.sends end
  return nil
end

-- After the schema validation (args are the validated arguments, with the
-- defaults): does the chosen action take every argument given and get the
-- ones it requires? true, or nil and the rule naming the field and the
-- action. An argument at its schema default counts as not given (the
-- validation puts it in every call).
function M.check_action(tool, args)
  if not tool.actions then return true end
  local a = action_of(tool, args)
  if not a then
    return nil, ("`action` must be one of %s"):format(list_names(tool.input_schema.properties.action.enum, "or", true))
  end
  local extra = {}
  for k, v in pairs(args) do
    if k ~= "action" and not a.properties[k] then
      local p = tool.input_schema.properties[k]
      if not (p and p.default ~= nil and same(p.default, v)) then extra[#extra + 1] = k end
    end
  end
  if #extra > 0 then
    table.sort(extra)
    local names, where = {}, {}
    for i, k in ipairs(extra) do
      names[i] = "`" .. k .. "`"
      local users = {}
      for _, n in ipairs(tool.input_schema.properties.action.enum) do
        if tool.actions[n].properties[k] then users[#users + 1] = n end
      end
      where[i] = #users == 0 and ("`%s` is not an argument of this tool"):format(k)
        or ("`%s` is only used with action%s %s"):format(k, #users > 1 and "s" or "", list_names(users, "and", true))
    end
    return nil, ("%s %s not used with action %q (%s)"):format(table.concat(names, ", "),
      #extra == 1 and "is" or "are", a.name, table.concat(where, "; "))
  end
  local missing = {}
  for _, k in ipairs(a.required_list) do
    if args[k] == nil then missing[#missing + 1] = "`" .. k .. "`" end
  end
  if #missing > 0 then
    return nil, ("%s %s required for action %q"):format(table.concat(missing, ", "), #missing == 1 and "is" or "are",
      a.name)
  end
  return true
end

-- The handler of this call: its action's, or the tool's.
function M.handler(tool, args)
  local a = action_of(tool, args)
  return a and a.handler or tool.handler
end

-- The argument names a tool's `sends` declares as texts (of any of its
-- actions), as a set (the audit keeps them as it keeps bodies), or nil.
function M.send_texts(tool)
  if tool.send_texts == nil then
    local set, any = {}, false
    local decls = { tool.sends }
    for _, a in pairs(tool.actions or {}) do decls[#decls + 1] = a.sends end
    for _, d in pairs(decls) do
      for _, t in ipairs(d.texts or {}) do
        set[type(t) == "table" and t[1] or t] = true
        any = true
      end
    end
    tool.send_texts = any and set or false
  end
  return tool.send_texts or nil
end

-- What this call would send: { recipient, outbound = { { text, where,
-- field, name (of a map entry), part ("name"/"value") } … } }, or nil.
function M.outbound(tool, args)
  local decl = M.sends(tool, args)
  if not decl then return nil end
  local out = {}
  for _, t in ipairs(decl.texts or {}) do
    local field, label = t, nil
    if type(t) == "table" then field, label = t[1], t[2] end
    label = label or ("the " .. field)
    local v = args[field]
    if type(t) == "table" and t.map and type(v) == "table" then
      local names = {}
      for name in pairs(v) do names[#names + 1] = tostring(name) end
      table.sort(names)
      for _, name in ipairs(names) do
        out[#out + 1] = { text = name, where = "the name of a " .. label, field = field, name = name, part = "name" }
        local val = v[name]
        if type(val) == "string" then
          out[#out + 1] = { text = val, where = label, field = field, name = name, part = "value" }
        end
      end
    elseif type(v) == "string" then
      out[#out + 1] = { text = v, where = label, field = field }
    end
  end
  local r = args[decl.recipient]
  return { recipient = type(r) == "string" and r or nil, outbound = out }
end

-- Does this call write? (a whole tool, or one of its actions)
function M.writes(tool, args)
  local w = tool.writes_spec
  if type(w) == "table" then return w[args and args.action] == true end
  return w
end

local function lua_files(dir, out)
  local attr = lfs.attributes(dir)
  if not attr then return nil, ("tool directory %s does not exist"):format(dir) end
  local names = {}
  for name in lfs.dir(dir) do
    if name ~= "." and name ~= ".." then names[#names + 1] = name end
  end
  table.sort(names)
  for _, name in ipairs(names) do
    local path = dir .. "/" .. name
    local mode = lfs.attributes(path, "mode")
    if mode == "directory" then
      local ok, err = lua_files(path, out)
      if not ok then return nil, err end
    elseif mode == "file" and name:match("%.lua$") then
      out[#out + 1] = path
    end
  end
  return true
end

-- A package's tools take its group, connection and instructions unless
-- they say otherwise.
local function with_package(def, pkg)
  if not pkg or type(def) ~= "table" then return def end
  if def.group == nil then def.group = pkg.group end
  if def.connection == nil then def.connection = pkg.name end
  if def.instructions == nil then def.instructions = pkg.instructions end
  return def
end

local function load_tool(path, pkg)
  local env = setmetatable({}, { __index = _G, __newindex = function(_, k)
    error(("tool files must not set globals (tried '%s')"):format(tostring(k)), 2)
  end })
  local chunk, err = loadfile(path, "t", env)
  if not chunk then return nil, err end
  local ok, def = pcall(chunk)
  if not ok then return nil, ("%s: %s"):format(path, tostring(def)) end
  local tool, cerr = M.check(with_package(def, pkg))
  if not tool then return nil, ("%s: %s"):format(path, cerr) end
  tool.file = path
  return tool
end

-- Build a registry from directories. Returns it or nil, err (file and
-- field). With opts.skip_broken (at start), a file that does not load or
-- check is left out instead: the registry of the others is returned with
-- the list of the files left out, each "path: error".
function M.load(dirs, opts)
  local skip = opts and opts.skip_broken
  local self = setmetatable({ tools = {}, order = {}, gated = {} }, M)
  local broken = {}
  for _, entry in ipairs(dirs) do
    -- a directory, or { dir = …, package = pkg } for a package's tools
    local dir, pkg = entry, nil
    if type(entry) == "table" then dir, pkg = entry.dir, entry.package end
    local files = {}
    local ok, err = lua_files(dir, files)
    if not ok then return nil, err end
    for _, path in ipairs(files) do
      local tool, terr = load_tool(path, pkg)
      local prev = tool and self.tools[tool.name]
      if prev then
        tool, terr = nil, ("%s: name: '%s' is already defined by %s"):format(path, tool.name, prev.file)
      end
      if not tool then
        if not skip then return nil, terr end
        broken[#broken + 1] = terr
      else
        self.tools[tool.name] = tool
        self.order[#self.order + 1] = tool.name
        if tool.connection then self.gated[tool.group] = M.required_feature(tool.connection) end
      end
    end
  end
  table.sort(self.order)
  return self, broken
end

-- The tenant feature a connection's tools need (the feature of the
-- integration package it names), true when the package needs none. A
-- connection no installed package provides needs a feature no tenant has:
-- its tools stay hidden.
local UNAVAILABLE = "\0unavailable"
function M.required_feature(connection)
  local pkg = integrations.get(connection)
  if not pkg then return UNAVAILABLE end
  return pkg.feature or true
end

-- May a tenant with this entitlement (directory.tenant_groups) use group g?
-- A group whose tools need a connection counts only when the tenant has it
-- enabled and holds the provider's feature.
function M:entitled(g, enabled)
  local need = self.gated[g]
  if not need then return true end
  if not (enabled and enabled[g]) then return false end
  return need == true or enabled[directory.feature_key(need)] == true
end

-- The tools an agent with these groups may see, sorted by name.
function M:visible(groups, enabled)
  local allowed = {}
  for _, g in ipairs(groups) do
    if self:entitled(g, enabled) then allowed[g] = true end
  end
  local out = {}
  for _, name in ipairs(self.order) do
    local t = self.tools[name]
    if allowed[t.group] then out[#out + 1] = t end
  end
  return out
end

function M:find(name, groups, enabled)
  local t = self.tools[name]
  if not t then return nil end
  if not self:entitled(t.group, enabled) then return nil end
  for _, g in ipairs(groups) do
    if g == t.group then return t end
  end
  return nil
end

-- A fingerprint of what an agent with these groups sees.
function M:view_fingerprint(groups, enabled)
  local parts = {}
  for _, t in ipairs(self:visible(groups, enabled)) do parts[#parts + 1] = t.fingerprint end
  return table.concat(parts, ",")
end

return M
