-- Each integration package's own schema: its manifest's `migrations`, a
-- list of SQL texts in SQLite's dialect (PostgreSQL reads their column
-- types as db.pg_types maps them), or { sqlite = {…}, pg = {…} } where the
-- dialects differ; run in order once each and recorded per package, as the
-- core's own migrations are recorded.
local db_mod = require("switchboard.db")

local M = {}

local SQL = {
  table = "CREATE TABLE IF NOT EXISTS integration_schema (name TEXT PRIMARY KEY, version INTEGER NOT NULL)",
  get = "SELECT version FROM integration_schema WHERE name = ?",
  set = "INSERT INTO integration_schema (name, version) VALUES (?, ?)"
    .. " ON CONFLICT (name) DO UPDATE SET version = excluded.version",
}

-- The migrations of a manifest for this store's dialect.
local function list_for(db, migrations)
  local dialect = db_mod.dialect(db)
  if migrations[1] == nil and next(migrations) ~= nil then return migrations[dialect] or {} end
  if dialect ~= "pg" then return migrations end
  local out = {}
  for i, sql in ipairs(migrations) do out[i] = db_mod.pg_types(sql) end
  return out
end

-- Bring a package's schema up to date. Returns the version or nil, err
-- (nothing of a failed step is kept).
function M.migrate(db, name, migrations)
  local ok, err = db:exec(SQL.table)
  if not ok then return nil, err end
  local list = list_for(db, migrations or {})
  local row
  row, err = db:row(SQL.get, name)
  if row == nil and err then return nil, err end
  local version = row and row.version or 0
  if version > #list then
    return nil, ("integration %s: the database has its schema version %d, newer than the package's %d")
      :format(name, version, #list)
  end
  for v = version + 1, #list do
    ok, err = db_mod.transaction(db, function()
      local eok, eerr = db:exec(list[v])
      if not eok then return nil, eerr end
      return db:run(SQL.set, name, v)
    end)
    if not ok then return nil, ("integration %s: migration %d failed: %s"):format(name, v, tostring(err)) end
  end
  return #list
end

return M
