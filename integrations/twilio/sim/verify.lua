-- The simulator's verify.twilio.com (/v2/Services/{VA}/...): start a
-- verification, check a code, fetch and cancel. The codes "sent" are
-- readable through the control API (GET /__sim/verify/codes).
--
-- Limits (fixture settings): verify_max_sends sends per destination in
-- verify_send_window seconds, then 429/60203; verify_max_checks wrong
-- checks, then the next check is 429/60202 and the verification is gone;
-- codes live verify_ttl seconds. Approved, canceled, expired and exhausted
-- verifications are deleted, so later checks get 404/20404.
local json = require("switchboard.json")
local U = require("integrations.twilio.sim.util")
local S = require("integrations.twilio.sim.state")

local M = {}

local null = json.null
local CHANNELS = { sms = true, call = true, whatsapp = true, email = true, sna = true, auto = true }

local function verification_json(v)
  local attempts = {}
  for _, a in ipairs(v.attempts) do
    attempts[#attempts + 1] = { time = U.iso(a.time), channel = a.channel:upper(), attempt_sid = a.sid }
  end
  return {
    sid = v.sid,
    service_sid = v.service_sid,
    account_sid = v.account_sid,
    to = v.to,
    channel = v.channel,
    status = v.status,
    valid = v.status == "approved",
    date_created = U.iso(v.date_created),
    date_updated = U.iso(v.date_updated),
    lookup = {},
    amount = null,
    payee = null,
    send_code_attempts = json.array(attempts),
    sna = null,
    url = ("https://verify.twilio.com/v2/Services/%s/Verifications/%s"):format(v.service_sid, v.sid),
  }
end

local function check_json(v)
  return {
    sid = v.sid,
    service_sid = v.service_sid,
    account_sid = v.account_sid,
    to = v.to,
    channel = v.channel,
    status = v.status,
    valid = v.status == "approved",
    amount = null,
    payee = null,
    sna_attempts_error_codes = json.array({}),
    date_created = U.iso(v.date_created),
    date_updated = U.iso(v.date_updated),
  }
end

local function key_of(v) return v.service_sid .. " " .. v.to end

-- Forget a verification (it stays readable in the control API's log).
local function delete(st, v, status)
  v.status = status
  st.verifications[v.sid] = nil
  if st.pending[key_of(v)] == v.sid then st.pending[key_of(v)] = nil end
end

-- The live verification with this sid, or nil (an expired one is deleted).
local function live(st, sid)
  local v = st.verifications[sid]
  if v and S.now(st) >= v.expires then
    delete(st, v, "expired")
    return nil
  end
  return v
end

local function invalid(param, value)
  if value == nil then
    return U.error(400, 60200, ("Invalid parameter: %s"):format(param))
  end
  return U.error(400, 60200, ("Invalid parameter `%s`: %s"):format(param, value))
end

local function start(st, svc, form)
  local to, channel = U.one(form.To), U.one(form.Channel)
  if not to or to == "" then return invalid("To") end
  if not channel or channel == "" then return invalid("Channel") end
  channel = channel:lower()
  if not CHANNELS[channel] then return invalid("Channel", channel) end
  if channel == "email" then
    if not U.is_email(to) then return invalid("To", to) end
  elseif not U.is_e164(to) then
    return invalid("To", to)
  end
  local custom = U.one(form.CustomCode)
  if custom and not custom:match("^%w%w%w%w%w?%w?%w?%w?%w?%w?$") then
    return invalid("CustomCode", custom)
  end
  local lk = st.lookups[to]
  if channel == "sms" and lk and lk.line_type_intelligence and lk.line_type_intelligence.type == "landline" then
    return U.error(400, 60205, "SMS is not supported by landline phone number")
  end

  local now = S.now(st)
  local skey = svc.sid .. " " .. to
  local times = st.sends[skey] or {}
  local recent = {}
  for _, t in ipairs(times) do
    if t > now - st.settings.verify_send_window then recent[#recent + 1] = t end
  end
  st.sends[skey] = recent
  if #recent >= st.settings.verify_max_sends then
    return U.error(429, 60203, "Max send attempts reached")
  end
  recent[#recent + 1] = now

  local v = st.pending[skey] and live(st, st.pending[skey])
  if v then                     -- a resend within the validity reuses the code
    v.channel = channel
    v.date_updated = now
    if custom then v.code = custom end
  else
    v = {
      sid = U.sid("VE"), service_sid = svc.sid, account_sid = svc.account, to = to, channel = channel,
      status = "pending", code = custom or U.digits(svc.code_length), checks = 0,
      date_created = now, date_updated = now, expires = now + st.settings.verify_ttl, attempts = {},
    }
    st.verifications[v.sid] = v
    st.pending[skey] = v.sid
  end
  v.attempts[#v.attempts + 1] = { time = now, channel = channel, sid = U.sid("VL") }
  local rec = { to = to, code = v.code, service_sid = svc.sid, verification_sid = v.sid, channel = channel,
                time = U.iso(now) }
  st.codes[to] = rec
  st.code_log[#st.code_log + 1] = rec
  return U.json(201, verification_json(v))
end

local function check(st, svc, form, path)
  local code, to, vsid = U.one(form.Code), U.one(form.To), U.one(form.VerificationSid)
  if not code or code == "" then return invalid("Code") end
  if (not to or to == "") and (not vsid or vsid == "") then
    return U.error(400, 60200, "Invalid parameter: Either a 'To' or a 'VerificationSid' is required")
  end
  local v
  if vsid and vsid ~= "" then
    v = live(st, vsid)
  else
    local sid = st.pending[svc.sid .. " " .. to]
    v = sid and live(st, sid)
  end
  if not v or v.service_sid ~= svc.sid then return U.not_found(path) end
  if v.checks >= st.settings.verify_max_checks then
    delete(st, v, "max_attempts_reached")
    return U.error(429, 60202, "Max check attempts reached")
  end
  local now = S.now(st)
  v.date_updated = now
  if code == v.code then
    delete(st, v, "approved")
  else
    v.checks = v.checks + 1
  end
  return U.json(200, check_json(v))
end

function M.route(sim, req, params, form, who) -- luacheck: ignore params
  local st = sim.state
  local path, method = req.path, req.method
  local va, rest = path:match("^/v2/Services/([^/]+)(.*)$")
  local svc = va and st.services[va]
  if not svc or svc.account ~= who.account.sid then return U.not_found(path) end
  if rest == "" then
    if method ~= "GET" then return U.error(405, 20004, "Method not allowed") end
    return U.json(200, {
      sid = svc.sid, account_sid = svc.account, friendly_name = svc.friendly_name, code_length = svc.code_length,
      lookup_enabled = false, psd2_enabled = false, skip_sms_to_landlines = false, dtmf_input_required = true,
      tts_name = null, do_not_share_warning_enabled = false, custom_code_enabled = true,
      date_created = U.iso(svc.date_created), date_updated = U.iso(svc.date_created),
      url = "https://verify.twilio.com/v2/Services/" .. svc.sid,
    })
  end
  if rest == "/Verifications" then
    if method ~= "POST" then return U.error(405, 20004, "Method not allowed") end
    return start(st, svc, form)
  end
  if rest == "/VerificationCheck" then
    if method ~= "POST" then return U.error(405, 20004, "Method not allowed") end
    return check(st, svc, form, path)
  end
  local ve = rest:match("^/Verifications/([^/]+)$")
  if ve then
    local v = live(st, ve)
    if not v or v.service_sid ~= svc.sid then return U.not_found(path) end
    if method == "GET" then return U.json(200, verification_json(v)) end
    if method == "POST" then
      local status = U.one(form.Status)
      if status ~= "canceled" and status ~= "approved" then return invalid("Status", status) end
      v.date_updated = S.now(st)
      delete(st, v, status)
      return U.json(200, verification_json(v))
    end
    return U.error(405, 20004, "Method not allowed")
  end
  return U.not_found(path)
end

return M
