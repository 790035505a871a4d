-- What restore checks in a copy of the database before it replaces the
-- live one: its integrity and that it is a Switchboard database. Every
-- function takes the db handle first and returns values, or nil, err.
local M = {}

-- "ok" when the database is intact, else the first problem found; nil,
-- err when it is not a database.
function M.integrity(db)
  local r, err = db:row("PRAGMA quick_check")
  if not r then return nil, err or "no result" end
  return r.quick_check
end

-- Whether every table named in names (a list) is there.
function M.has_tables(db, names)
  assert(type(names) == "table" and #names > 0, "backup.has_tables: names must be a list")
  local rows, err = db:query("SELECT name FROM sqlite_master WHERE type = 'table'")
  if not rows then return nil, err end
  local have = {}
  for _, r in ipairs(rows) do have[r.name] = true end
  for _, n in ipairs(names) do
    if not have[n] then return false end
  end
  return true
end

return M
