-- Counts over the records for the metrics page. Every function takes the
-- db handle first and returns values, or nil, err when the store failed.
local M = {}

-- The write-ahead send records by status: { [status] = n }.
function M.sends_by_status(db)
  local rows, err = db:query("SELECT status, count(*) AS n FROM sends GROUP BY status")
  if not rows then return nil, err end
  local by = {}
  for _, r in ipairs(rows) do by[r.status] = r.n end
  return by
end

-- Per tenant with final delivery receipts, by tenant name: { tenant,
-- ok (delivered or read), n (every final receipt) }.
function M.delivery_by_tenant(db)
  return db:query("SELECT t.name AS tenant, sum(CASE WHEN s.delivery_status IN ('delivered', 'read') THEN 1 ELSE 0 END) AS ok,"
    .. " count(*) AS n FROM sends s JOIN tenants t ON t.id = s.tenant_id WHERE s.delivery_status IN"
    .. " ('delivered', 'read', 'undelivered', 'failed') GROUP BY t.name ORDER BY t.name")
end

-- A tenant's sends since `since` (unix seconds) per day, status and
-- delivery status: rows { day, status, delivery ('' when none), n }, or nil, err.
function M.sends_per_day(db, tenant_id, since)
  return db:query("SELECT substr(created_at, 1, 10) AS day, status,"
    .. " coalesce(delivery_status, '') AS delivery, count(*) AS n FROM sends WHERE tenant_id = ?"
    .. " AND created_unix >= ? GROUP BY day, status, delivery ORDER BY day", tenant_id, since)
end

return M
