-- A small template renderer for the console's own files (not for
-- untrusted templates): {{name}} substitutes a value HTML-escaped,
-- {{&name}} substitutes it as it is (HTML the console rendered itself),
-- {{#name}}…{{/name}} repeats for each item of a list (or once when the
-- value is true or a table), {{^name}}…{{/name}} when it is empty or
-- false. Names are looked up from the innermost item out; "a.b" walks
-- into a table, "." is the item itself.
local M = {}

local ESC = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;", ["'"] = "&#39;" }

function M.escape(v)
  if v == nil then return "" end
  return (tostring(v):gsub("[&<>\"']", ESC))
end

-- text -> a tree of nodes, or raises naming the problem.
local function parse(text, name)
  local root = { kind = "root", nodes = {} }
  local stack, pos = { root }, 1
  while true do
    local s, e, tag = text:find("{{(.-)}}", pos)
    local top = stack[#stack]
    if not s then
      top.nodes[#top.nodes + 1] = text:sub(pos)
      break
    end
    top.nodes[#top.nodes + 1] = text:sub(pos, s - 1)
    local sigil, key = tag:match("^%s*([#^/&]?)%s*([%w_%.]+)%s*$")
    if not sigil then error(("template %s: bad tag {{%s}}"):format(name, tag), 0) end
    if sigil == "#" or sigil == "^" then
      local n = { kind = sigil, key = key, nodes = {} }
      top.nodes[#top.nodes + 1] = n
      stack[#stack + 1] = n
    elseif sigil == "/" then
      if top.key ~= key or #stack == 1 then
        error(("template %s: {{/%s}} closes nothing open"):format(name, key), 0)
      end
      stack[#stack] = nil
    else
      top.nodes[#top.nodes + 1] = { kind = sigil == "&" and "raw" or "var", key = key }
    end
    pos = e + 1
  end
  if #stack > 1 then error(("template %s: {{#%s}} is not closed"):format(name, stack[#stack].key), 0) end
  return root
end

local function lookup(ctx, key)
  if key == "." then return ctx[#ctx] end
  local first, rest = key:match("^([^%.]+)%.?(.*)$")
  local v
  for i = #ctx, 1, -1 do
    local c = ctx[i]
    if type(c) == "table" and c[first] ~= nil then v = c[first] break end
  end
  for part in rest:gmatch("[^%.]+") do
    if type(v) ~= "table" then return nil end
    v = v[part]
  end
  return v
end

local function empty(v)
  return v == nil or v == false or v == "" or (type(v) == "table" and next(v) == nil)
end

local function render(node, ctx, out)
  for _, n in ipairs(node.nodes) do
    if type(n) == "string" then
      out[#out + 1] = n
    elseif n.kind == "var" then
      out[#out + 1] = M.escape(lookup(ctx, n.key))
    elseif n.kind == "raw" then
      local v = lookup(ctx, n.key)
      out[#out + 1] = v == nil and "" or tostring(v)
    else
      local v = lookup(ctx, n.key)
      local is_list = type(v) == "table" and rawget(v, 1) ~= nil
      if n.kind == "^" then
        if empty(v) then render(n, ctx, out) end
      elseif is_list then
        for _, item in ipairs(v) do
          ctx[#ctx + 1] = item
          render(n, ctx, out)
          ctx[#ctx] = nil
        end
      elseif type(v) == "table" then
        if next(v) ~= nil then
          ctx[#ctx + 1] = v
          render(n, ctx, out)
          ctx[#ctx] = nil
        end
      elseif not empty(v) then
        render(n, ctx, out)
      end
    end
  end
end

-- A compiled template: t:render(values) -> text.
local Template = {}
Template.__index = Template

function Template:render(values)
  local out = {}
  render(self.tree, { values or {} }, out)
  return table.concat(out)
end

function M.compile(text, name)
  return setmetatable({ tree = parse(text, name or "?") }, Template)
end

-- Every *.html of dir, compiled: name (without .html) -> Template; or nil, err.
function M.load_dir(dir, names)
  local out = {}
  for _, n in ipairs(names) do
    local path = ("%s/%s.html"):format(dir, n)
    local f, err = io.open(path, "rb")
    if not f then return nil, "console template: " .. err end
    local text = f:read("a")
    f:close()
    local ok, t = pcall(M.compile, text, path)
    if not ok then return nil, t end
    out[n] = t
  end
  return out
end

return M
