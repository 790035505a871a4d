-- Opened credentials, kept per (tenant, integration) for the integration's
-- credential_seconds: a credential handle holds the secret in locked memory
-- (core.vault), and opening one costs two decryptions and a page. An entry
-- is checked against the sealed blob, the key id and the tenant's wrapped
-- data key it was opened from, so a rotated key or another tenant never
-- gets it. It is wiped (closed) on expiry, on forget (an update, a refused
-- key, a disconnect) and at stop; a call still using it keeps it open until
-- that call releases it.
local loop = require("core.loop")
local directory = require("switchboard.directory")

local M = {}

local cache = {}          -- integration -> tenant id -> entry
local Lease = {}
Lease.__index = Lease

-- entry: { cred, blob, user, data_key, leases, retired, timer }
local function retire(e)
  e.retired = true
  if e.timer then e.timer:close(); e.timer = nil end
  if e.leases == 0 then e.cred:close() end
end

-- Give back a credential open handed out. Idempotent.
function Lease:close()
  local e = self.entry
  if not e then return end
  self.entry = nil
  e.leases = e.leases - 1
  if e.retired and e.leases == 0 then e.cred:close() end
end
Lease.__close = Lease.close

local function lease(e)
  e.leases = e.leases + 1
  return setmetatable({ entry = e, cred = e.cred }, Lease)
end

-- Wipe the tenant's cached credential for an integration (a call in
-- progress keeps its own until it ends).
function M.forget(integration, tenant_id)
  local by = cache[integration]
  local e = by and by[tenant_id]
  if e then
    by[tenant_id] = nil
    retire(e)
  end
end

-- Wipe every cached credential (at stop).
function M.forget_all()
  for integration, by in pairs(cache) do
    for id in pairs(by) do M.forget(integration, id) end
  end
end

-- The cached credential handle, or nil (for tests).
function M.cached(integration, tenant_id)
  local e = cache[integration] and cache[integration][tenant_id]
  return e and e.cred
end

-- A lease on an opened credential for a sealed secret. spec:
--   { integration, tenant (row with data_key), field (the sealing field),
--     blob (sealed secret), user (key id, for Basic), kind, header,
--     seconds (how long to keep it; 0 or nil opens it for this use only) }
-- Returns lease (lease.cred is the handle; lease:close() gives it back) or
-- nil, err.
function M.open(rt, spec)
  local tenant, seconds = spec.tenant, spec.seconds or 0
  local by = cache[spec.integration]
  if not by then by = {}; cache[spec.integration] = by end
  local e = seconds > 0 and by[tenant.id] or nil
  if e then
    if e.blob == spec.blob and e.user == spec.user and e.data_key == tenant.data_key then return lease(e) end
    M.forget(spec.integration, tenant.id)
  end
  -- how core.http applies it: HTTP Basic with the key id as the user, a
  -- Bearer token, or a named header (the secret stays in C either way)
  local desc = spec.user
  if spec.kind and spec.kind ~= "basic" then desc = { kind = spec.kind, header = spec.header, id = spec.user } end
  local cred = directory.credential(rt.master, tenant, spec.field, spec.blob, desc)
  if not cred then return nil, "the stored credential could not be opened" end
  e = { cred = cred, blob = spec.blob, user = spec.user, data_key = tenant.data_key, leases = 0,
        retired = seconds <= 0 }
  if seconds > 0 then
    local id = tenant.id
    by[id] = e
    e.timer = loop.timer(seconds, 0, function()
      if by[id] == e then M.forget(spec.integration, id) end
    end)
  end
  return lease(e)
end

return M
