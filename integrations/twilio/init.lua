-- The Twilio integration's manifest: what the core reads to discover it.
-- Everything that is Twilio's lives in this folder: the connection model
-- and its admin methods (connection.lua), the REST client (client.lua),
-- the seven tools (tools/), their shared pieces (common.lua), the CLI verbs
-- (cli.lua), delivery receipts and the reconciliation of unknown sends
-- (receipts.lua, reconcile.lua), the simulator (sim/) and the tests (tests/).
return {
  name = "twilio",
  title = "Twilio",
  description = "SMS, WhatsApp, number lookups, call review, phone verification and usage through a"
    .. " tenant's Twilio account (API key).",
  feature = "custom.twilio",
  group = "Twilio Communications",
  -- one text for every Twilio tool (the server shows it once)
  instructions = table.concat({
    "Twilio tools (SMS, WhatsApp, lookups, calls, verification, usage). Working rules:",
    "- Write every phone number in E.164 form, like +14155550123: a plus, the country code, no spaces.",
    "- Before texting a number you have not contacted before, look it up with twilio_lookup_phone;"
      .. " do not text invalid numbers or landlines.",
    "- Sends cost money and cannot be taken back: send once. After an error that says not to retry, or an"
      .. " unknown outcome, do not resend; check with twilio_search_messages instead.",
    "- Narrow history searches (twilio_search_messages, twilio_manage_calls) with dates and a small limit.",
    "- Verification is two steps: twilio_verify_phone send_code, then check_code with the code the person"
      .. " gives you. A wrong code is not an error; never send codes in a loop.",
    "- Check usage and spend with twilio_account_overview (usage_summary) before large outreach.",
  }, "\n"),
  -- the section `twilio = { … }` of the configuration (besides timeout,
  -- ca_file and credential_seconds, which every integration has)
  config = {
    hosts = { type = "table", fields = {
      api = { type = "string", default = "https://api.twilio.com" },
      lookups = { type = "string", default = "https://lookups.twilio.com" },
      verify = { type = "string", default = "https://verify.twilio.com" },
      content = { type = "string", default = "https://content.twilio.com" },
    } },
  },
  connection = "connection",
  cli = "cli",
  sim = "sim.cli",
  receipts = "receipts",
  reconcile = "reconcile",
  metrics = "metrics",
}
