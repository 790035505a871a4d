-- The configuration of the switchboard service (switchboard.conf(5)).
-- switchboard.service runs `switchboard serve --config` with this file;
-- `switchboard admin` run from an installed prefix reads it by default.
-- Every key not given here keeps its default.
return {
  data_dir = "/var/lib/switchboard",          -- the service's StateDirectory
  agent_socket = "/run/switchboard/agent.sock", -- passed by switchboard.socket
  admin_socket = "/run/switchboard/admin.sock", -- passed by switchboard-admin.socket
  master_key_file = "/var/lib/switchboard/master.key",
  create_master_key = true,
  -- the key from a systemd credential instead (LoadCredentialEncrypted=
  -- master.key:… in the unit), never created:
  -- master_key_credential = "master.key",
  log = { level = "info" },                    -- stderr: the journal
}
