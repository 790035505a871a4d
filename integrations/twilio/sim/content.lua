-- The simulator's content.twilio.com: GET /v1/Content (list),
-- /v1/Content/{HX} and /v1/Content/{HX}/ApprovalRequests.
local json = require("switchboard.json")
local U = require("integrations.twilio.sim.util")

local M = {}

local null = json.null
local BASE = "https://content.twilio.com/v1/Content/"

local function content_json(c)
  return {
    sid = c.sid,
    account_sid = c.account,
    friendly_name = c.friendly_name or null,
    language = c.language or "en",
    variables = c.variables or {},
    types = c.types or {},
    url = BASE .. c.sid,
    date_created = U.iso(c.date_created),
    date_updated = U.iso(c.date_updated),
    links = {
      approval_create = BASE .. c.sid .. "/ApprovalRequests/whatsapp",
      approval_fetch = BASE .. c.sid .. "/ApprovalRequests",
    },
  }
end

local function approval_json(c)
  local a = c.approval or {}
  return {
    account_sid = c.account,
    sid = c.sid,
    url = BASE .. c.sid .. "/ApprovalRequests",
    whatsapp = {
      type = "whatsapp",
      name = a.name or c.friendly_name or null,
      category = a.category or "UTILITY",
      content_type = "twilio/text",
      status = a.status or "unsubmitted",
      rejection_reason = a.rejection_reason or "",
      allow_category_change = a.allow_category_change == true,
    },
  }
end

local function not_allowed(req)
  return U.error(405, 20004, ("Method %s not allowed on %s"):format(req.method, req.path))
end

function M.route(sim, req, params, _, who)
  local st = sim.state
  local path = req.path
  if path == "/v1/Content" then
    if req.method ~= "GET" then return not_allowed(req) end
    local items = {}
    for _, c in ipairs(st.content_order) do
      if c.account == who.account.sid then items[#items + 1] = c end
    end
    local size, page = U.page_size(params), U.page_number(params)
    if not size or not page then
      local name = size and "Page" or "PageSize"
      return U.error(400, 20001, ("Invalid parameter %s: %s"):format(name, tostring(U.one(params[name]))))
    end
    local slice = {}
    for i = page * size + 1, math.min(#items, (page + 1) * size) do
      slice[#slice + 1] = content_json(items[i])
    end
    local host = "http://" .. (req.headers.host or "127.0.0.1") .. "/v1/Content"
    local function url(p) return ("%s?PageSize=%d&Page=%d"):format(host, size, p) end
    return U.json(200, {
      contents = json.array(slice),
      meta = {
        page = page, page_size = size, first_page_url = url(0), url = url(page), key = "contents",
        previous_page_url = page > 0 and url(page - 1) or null,
        next_page_url = (page + 1) * size < #items and url(page + 1) or null,
      },
    })
  end
  local hx, rest = path:match("^/v1/Content/([^/]+)(.*)$")
  local c = hx and st.contents[hx]
  if not c or c.account ~= who.account.sid then return U.not_found(path) end
  if req.method ~= "GET" then return not_allowed(req) end
  if rest == "" then return U.json(200, content_json(c)) end
  if rest == "/ApprovalRequests" then return U.json(200, approval_json(c)) end
  return U.not_found(path)
end

return M
