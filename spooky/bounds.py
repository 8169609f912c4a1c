"""Size and range bounds of what the engine's API accepts, each defined once (no torch import).

The contract's models, the API's body reader and the engine's checks import these, so a bound
changed here changes everywhere it is enforced and everywhere it is reported.
"""

from __future__ import annotations

#: Longest prompt text accepted at the door; CLIP's 77-token limit is checked by the engine.
MAX_PROMPT_CHARS = 1000
MAX_SEED = 2**32 - 1
#: Hard bounds of one job, whatever a request, the config or a server's limits say (servers set
#: lower ones with /limits, up to these).
MAX_STEPS = 1000  # stage-1 steps, and scare steps
MAX_FRAMES = 3000  # nightmare frames (100 s at 30 fps)
#: Largest canvas side: VQGAN+CLIP memory grows with the pixel count, and 608x752 is the default.
MAX_CANVAS_SIDE = 1024
#: The ranges moderators may set with /limits (besides MAX_STEPS and MAX_FRAMES).
MAX_QUEUE_PER_SERVER = 1000
MAX_JOBS_PER_USER = 100
MAX_COOLDOWN_S = 86400  # one day
#: The smallest video budget a request may ask for: a server's upload limit can be far below the
#: engine's default. The engine fits what it can (down to 64 px, a low bitrate) and, when even
#: that is larger, fails the job with the real sizes.
MIN_VIDEO_BYTES = 1024
#: Job and artifact ids: what the engine hands out (16 URL-safe characters), with room to spare.
ID_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"
#: Discord snowflakes: ASCII digits only, at most 20 of them (2**64 has 20 digits).
SNOWFLAKE_PATTERN = r"^[0-9]{1,20}$"
#: Event ids are SQLite integers: `after=` and Last-Event-ID beyond this cannot name an event.
MAX_EVENT_ID = 2**63 - 1
#: The bot's opaque bookkeeping on a job (interaction token, message ids).
CLIENT_MAX_ENTRIES = 16
CLIENT_KEY_CHARS = 64
CLIENT_VALUE_CHARS = 1000
#: Largest JSON body of any route: a JobRequest at its limits is far below this, and a body this
#: size parses in milliseconds, so no request can hold the event loop for long.
MAX_JSON_BODY_BYTES = 256 * 1024
#: Error answers stay short: at most this many validation details, each message cut to this
#: many characters, and an offending input echoed only when it is a short scalar.
MAX_ERROR_DETAILS = 20
MAX_ERROR_CHARS = 200
MAX_ECHOED_INPUT_CHARS = 60
