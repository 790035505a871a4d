-- The manual pages: mandoc -Tlint finds nothing at warning level or
-- above, switchboard(1) has an entry for every command of the parser
-- (with each of its arguments and options) and switchboard.conf(5) one for
-- every configuration key, showing its default. The lists are walked from
-- cli.ADMIN_SPEC, the parser and config.spec, so a new command or key
-- without its page entry fails here.
local H = require("helpers")
local cli = require("switchboard.cli")
local config = require("switchboard.config")

local PAGE1 = H.ROOT .. "/man/switchboard.1"
local PAGE5 = H.ROOT .. "/man/switchboard.conf.5"

-- The `.It Cm words ...` entries of a page: words -> the entry's text
-- (up to the next `.It Cm`).
local function entries(text)
  local out, current = {}, nil
  for line in (text .. "\n"):gmatch("(.-)\n") do
    local rest = line:match("^%.It Cm (.*)$")
    if rest then
      local words = {}
      for w in rest:gmatch("%S+") do
        if w:match("^%u%l$") then break end -- a macro: Ar, Op, Oo, Fl ...
        words[#words + 1] = w
      end
      current = table.concat(words, " ")
      out[current] = line .. "\n"
    elseif current then
      out[current] = out[current] .. line .. "\n"
    end
  end
  return out
end

local function has_flag(text, name)
  return text:find("Fl " .. name:gsub("%-", "%%-") .. "%f[^%w%-]") ~= nil
end

-- Problems of switchboard(1) against the parser.
local function page1_problems(text)
  local e, problems = entries(text), {}
  local function need(key, spec)
    local t = e[key]
    if not t then
      problems[#problems + 1] = ("no entry for `%s`"):format(key)
      return
    end
    for _, a in ipairs(spec.args or {}) do
      local name = a:match("^%u+")
      if not t:find("Ar " .. name .. "%f[^%w]") then
        problems[#problems + 1] = ("`%s`: argument %s is not in its entry"):format(key, name)
      end
    end
    for _, o in ipairs(spec.opts or {}) do
      if not has_flag(t, "-" .. o) then
        problems[#problems + 1] = ("`%s`: option --%s is not in its entry"):format(key, o)
      end
    end
  end
  for _, n in ipairs(cli.ADMIN_SPEC) do
    if n[3] then
      for _, v in ipairs(n[3]) do need(n[1] .. " " .. v[1], v) end
    else
      need(n[1], n)
    end
  end
  local p = cli.build_parser()
  for _, c in ipairs(p._commands) do
    if not e[c._name] then problems[#problems + 1] = ("no entry for the command `%s`"):format(c._name) end
    for _, o in ipairs(c._options) do
      for _, alias in ipairs(o._aliases) do
        if alias:sub(1, 2) == "--" and not has_flag(text, alias:sub(2)) then
          problems[#problems + 1] = ("`%s`: option %s is not in the page"):format(c._name, alias)
        end
      end
    end
  end
  for _, o in ipairs(p._options) do
    for _, alias in ipairs(o._aliases) do
      if not has_flag(text, alias:sub(2)) then
        problems[#problems + 1] = ("option %s is not in the page"):format(alias)
      end
    end
  end
  return problems
end

-- Problems of switchboard.conf(5) against config.spec.
local function page5_problems(text)
  local e, problems, known = entries(text), {}, {}
  local function walk(fields, prefix)
    local keys = {}
    for k in pairs(fields) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do
      local f, name = fields[k], prefix .. k
      if f.type == "table" then
        walk(f.fields, name .. ".")
      else
        known[name] = true
        local t = e[name]
        if not t then
          problems[#problems + 1] = ("no entry for the key %s"):format(name)
        else
          local d = f.default
          local shown
          if type(d) == "table" then
            local items = {}
            for i, v in ipairs(d) do items[i] = ("%q"):format(v) end
            shown = #items == 0 and "{}" or ("{ " .. table.concat(items, ", ") .. " }")
          elseif type(d) == "string" then
            shown = d:gsub("^@data", "<data_dir>"):gsub("^@root", "<root>")
          elseif d ~= nil then
            shown = tostring(d)
          end
          if shown and not t:find(shown, 1, true) then
            problems[#problems + 1] = ("%s: its entry does not show the default %s"):format(name, shown)
          elseif d == nil and not t:find("Default: none", 1, true) then
            problems[#problems + 1] = ("%s: its entry does not say it has no default"):format(name)
          end
        end
      end
    end
  end
  walk(assert(config.full_spec(os.getenv("SB_ROOT") or ".")), "")
  for key in pairs(e) do
    if not known[key] then problems[#problems + 1] = ("the entry %s is not a configuration key"):format(key) end
  end
  table.sort(problems)
  return problems
end

describe("manual pages", function()
  it("pass mandoc -Tlint", function()
    local _, which = H.sh("command -v mandoc >/dev/null")
    assert.are.equal(0, which, "mandoc is not installed (Debian package mandoc)")
    for _, page in ipairs({ PAGE1, PAGE5 }) do
      local out, code = H.sh(("mandoc -Tlint -W warning %s 2>&1"):format(H.q(page)))
      assert.are.equal(0, code, page .. ":\n" .. out)
    end
  end)

  it("switchboard(1) has every command, argument and option of the parser", function()
    assert.are.same({}, page1_problems(assert(H.read(PAGE1))))
  end)

  it("switchboard.conf(5) has every configuration key with its default, and no other", function()
    assert.are.same({}, page5_problems(assert(H.read(PAGE5))))
  end)

  it("the checks find an entry taken out", function()
    local p1 = assert(H.read(PAGE1)):gsub("%.It Cm audit settings[^\n]*\n", "", 1)
    assert.are.same({ "no entry for `audit settings`" }, page1_problems(p1))
    local p1b = assert(H.read(PAGE1)):gsub("Fl %-reason", "Fl -why")
    assert.are.same({ "`escalation reject`: option --reason is not in its entry" }, page1_problems(p1b))
    local p5 = assert(H.read(PAGE5)):gsub("%.It Cm limits%.idle_seconds\n", "", 1)
    assert.are.same({ "no entry for the key limits.idle_seconds" }, page5_problems(p5))
  end)
end)
