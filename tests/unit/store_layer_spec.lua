-- The store layer: SQL, and statements on the db handle, appear only in
-- the repositories (lua/switchboard/store/) and db.lua (the migrations and
-- the group-commit writer), so nothing above the store assumes SQLite and
-- another store can follow. ALLOWED_FOR_NOW lists the modules whose SQL
-- is still to move into repositories; it is to be emptied.
local H = require("helpers")
local lfs = require("lfs")

local ROOT = os.getenv("SB_ROOT") or "."

-- What may hold SQL.
local STORE = { "^lua/switchboard/store/", "^lua/switchboard/db%.lua$" }
local ALLOWED_FOR_NOW = {
  "^integrations/[^/]+/tests/",   -- a package's specs, not runtime modules
}

-- The Lua of the runtime: its modules, policies and the entry point
-- (tests, benchmarks and examples are not runtime modules).
local TREES = { "lua", "policies", "integrations", "runtime.lua" }

-- What counts as SQL in a module: statements in string literals, calls
-- that run a statement on a db handle or its writer, and the SQLite
-- binding itself (a third field: the modules that may use that one;
-- backup.lua copies the SQLite file with its online backup).
local SQL_PATTERNS = {
  { 'require%(?%s*["\']core%.store["\']', "core.store (the SQLite binding)", { "^lua/switchboard/backup%.lua$" } },
  { "SELECT%s[^\n]-%sFROM%s", "a SELECT" },
  { "INSERT%s+INTO%s", "an INSERT" },
  { "INSERT%s+OR%s+%u+", "an INSERT OR …" },
  { "UPDATE%s+[%w_]+%s+SET%s", "an UPDATE" },
  { "DELETE%s+FROM%s", "a DELETE" },
  { "PRAGMA%s", "a PRAGMA" },
  { "CREATE%s+%u*%s*TABLE%s", "a CREATE TABLE" },
  { "CREATE%s+%u*%s*INDEX%s", "a CREATE INDEX" },
  { "ALTER%s+TABLE%s", "an ALTER TABLE" },
  { "sqlite_master", "sqlite_master" },
  { "%f[%w_]db:query%(", "db:query" },
  { "%f[%w_]db:row%(", "db:row" },
  { "%f[%w_]db:run%(", "db:run" },
  { "%f[%w_]db:insert%(", "db:insert" },
  { "%f[%w_]db:exec%(", "db:exec" },
  { "%f[%w_]db:begin%(", "db:begin" },
  { "%f[%w_]db:commit%(", "db:commit" },
  { "%f[%w_]db:rollback%(", "db:rollback" },
  { "writer%([^)]*%):insert%(", "an insert through the writer" },
  { "writer%([^)]*%):run%(", "a statement through the writer" },
  { "writer%([^)]*%):later%(", "a statement through the writer" },
}

local function matches_any(path, list)
  for _, p in ipairs(list) do
    if path:find(p) then return true end
  end
  return false
end

-- The Lua files under root/tree (tree a directory or a file), as paths
-- relative to root.
local function lua_files(root, tree, out)
  local full = root .. "/" .. tree
  local mode = lfs.attributes(full, "mode")
  if mode == "file" then
    if tree:match("%.lua$") then out[#out + 1] = tree end
  elseif mode == "directory" then
    for name in lfs.dir(full) do
      -- a package's tests are not runtime modules
      if name ~= "." and name ~= ".." and not (name == "tests" and tree:find("^integrations/")) then
        lua_files(root, tree .. "/" .. name, out)
      end
    end
  end
  return out
end

-- The code of a Lua file with its comment lines left empty.
local function code_of(path)
  local lines = {}
  for line in (H.read(path) .. "\n"):gmatch("([^\n]*)\n") do
    lines[#lines + 1] = line:match("^%s*%-%-") and "" or line
  end
  return table.concat(lines, "\n")
end

-- { "path: what (line n)" } for each file under root that holds SQL and
-- may not; allowed: extra path patterns that may.
local function violations(root, allowed)
  local out = {}
  for _, tree in ipairs(TREES) do
    for _, path in ipairs(lua_files(root, tree, {})) do
      if not matches_any(path, STORE) and not matches_any(path, allowed) then
        local code = code_of(root .. "/" .. path)
        for _, p in ipairs(SQL_PATTERNS) do
          local at = not matches_any(path, p[3] or {}) and code:find(p[1])
          if at then
            local line = select(2, code:sub(1, at):gsub("\n", "")) + 1
            out[#out + 1] = ("%s:%d: %s"):format(path, line, p[2])
          end
        end
      end
    end
  end
  table.sort(out)
  return out
end

describe("the store layer", function()
  it("holds all the SQL: no module above it runs a statement or holds one", function()
    assert.same({}, violations(ROOT, ALLOWED_FOR_NOW))
  end)

  it("the check finds SQL and statements outside the store, and not inside it", function()
    local root = H.tmpdir("storelayer")
    assert(lfs.mkdir(root .. "/lua"))
    assert(lfs.mkdir(root .. "/lua/switchboard"))
    assert(lfs.mkdir(root .. "/lua/switchboard/store"))
    H.write(root .. "/lua/switchboard/store/things.lua",
      'local M = {}\nfunction M.get(db, id) return db:row("SELECT * FROM things WHERE id = ?", id) end\nreturn M\n')
    H.write(root .. "/lua/switchboard/above.lua", table.concat({
      "local M = {}",
      "-- a comment may say SELECT x FROM y",
      "function M.a(self) return self.db:query(SQL_TEXT) end",
      "function M.b(rt) return rt.db:insert(X) end",
      'local S = "INSERT OR IGNORE INTO t (a) VALUES (?)"',
      'local U = "UPDATE things SET a = ?"',
      "function M.c(db) return db_mod.writer(db):later(nil, U) end",
      "function M.d(db) return db_mod.writer(db):flush() end",  -- committing what is queued is not SQL
      "function Session:run() end",            -- a method named run is not a statement
      'local blob = require("core.store").blob',
      "return M", "" }, "\n"))
    assert(lfs.mkdir(root .. "/policies"))
    H.write(root .. "/policies/p.lua", 'return function(rt) return rt.db:row(Q) end\n')
    local found = violations(root, {})
    H.sh("rm -rf " .. H.q(root))
    assert.same({                                -- sorted as strings
      "lua/switchboard/above.lua:10: core.store (the SQLite binding)",
      "lua/switchboard/above.lua:3: db:query",
      "lua/switchboard/above.lua:4: db:insert",
      "lua/switchboard/above.lua:5: an INSERT OR …",
      "lua/switchboard/above.lua:6: an UPDATE",
      "lua/switchboard/above.lua:7: a statement through the writer",
      "policies/p.lua:1: db:row",
    }, found)
  end)
end)
