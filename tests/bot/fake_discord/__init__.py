"""A local Discord-compatible API for tests: REST + gateway, just what the bot uses.

The real discord.py client talks to it over HTTP and a websocket, as it would to Discord. It keeps
messages (with their attachments' bytes), records every request for assertions, sends
INTERACTION_CREATE on demand, and can inject faults. Payload shapes follow the Discord API v10
documentation and what discord.py 2.x reads. One module per part:

- `state`: what Discord knows and stores (ids, users, servers, channels and the kind of place each
  is for the app, who installed it for themselves, whose DMs are closed, messages, interactions,
  the requests the bot made), and Discord's numbers (flags, permissions, contexts, types);
- `payloads`: Discord's objects as the API sends them (member, channel, guild, READY);
- `rest`: the REST routes and the rules Discord applies to them (upload limits, token lifetime,
  the acknowledgement deadline, nonces, Missing Access where the bot is not a member, closed DMs,
  what a form, a suggestion list or a command definition may hold);
- `gateway`: sessions, shards, heartbeats and event dispatch;
- `interactions`: the interactions Discord sends (slash commands and their autocomplete, message
  commands, button presses, form submits), where Discord offers them and with what context
  (`context`, `authorizing_integration_owners`, `app_permissions`, `attachment_size_limit`);
- `faults`: what a test injects (failed or dropped answers, answers held back);
- `server`: `FakeDiscord`, which starts it all and is what tests call.
"""
