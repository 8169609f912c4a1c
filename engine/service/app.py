"""`EngineService`: the engine's lifecycle around `EngineCore`, the API and the worker.

`[engine] role` picks the parts (roles.py): `all` runs everything below in one process; `api`
skips the models and the worker; `worker` skips the API but for health and metrics. With a
shared database (PostgreSQL) every node also LISTENs (store/notify.py: event streams, idle
workers and cancels wake on other nodes' commits) and reaps lapsed leases (lease.py).

start: open the store, requeue what a crash left running, serve the API at once (health
`loading`; submits are accepted and durable), load the models once in a thread, then `ready` and
the worker starts. stop (SIGTERM): health `draining`, new submits refused, the running job gets
`drain_timeout_s` to finish, then it is stopped and left queued for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from engine.service.admission import JobRules
from engine.service.api import build_app
from engine.service.artifacts import ArtifactFiles
from engine.service.core import EngineCore, default_limits
from engine.service.events import EventHub
from engine.service.lease import reap_loop
from engine.service.link import WorkerLink
from engine.service.roles import check_role, runs_api, runs_worker, worker_only
from engine.service.server import EngineRunner
from engine.service.store import MAX_ATTEMPTS, open_store
from engine.service.threads import run_in_daemon_thread
from spooky.config import Settings
from spooky.contract import HealthStatus
from spooky.errors import ConfigError

log = logging.getLogger(__name__)

DB_NAME = "engine.sqlite3"
#: How often old artifacts are swept (and once at start).
SWEEP_INTERVAL_S = 3600.0
#: Extra time after drain_timeout_s for the stopped job's last step and the outcome to be written.
DRAIN_GRACE_S = 30.0
#: On stop, how long to let a model load that is under way finish (it cannot be interrupted).
LOAD_WAIT_S = 60.0


def engine_secret(settings: Settings) -> str:
    """The API secret; a missing one stops the engine with instructions."""
    secret = settings.engine.secret.get_secret_value() if settings.engine.secret else ""
    if not secret.strip():
        raise ConfigError(
            "the engine has no API secret, so anyone who can reach its port could use it",
            hint=(
                'set SPOOKY_ENGINE_SECRET in the environment or `secret = "…"` under [engine] in '
                "config.toml (e.g. the output of "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`), "
                "and give the bot the same value"
            ),
        )
    if not secret.isascii() or not secret.isprintable() or secret != secret.strip():
        raise ConfigError(
            "the engine's API secret must be printable ASCII without surrounding spaces "
            "(it travels in an HTTP header)",
            hint="use e.g. the output of `python -c 'import secrets; print(secrets.token_urlsafe(32))'`",
        )
    return secret


class EngineService:
    """One engine: store, API, model loading, worker, retention sweep, drain."""

    def __init__(
        self,
        settings: Settings,
        *,
        models: Any | None = None,
        port: int | None = None,
        autoload: bool = True,
        step_hook: Any | None = None,
    ) -> None:
        self.settings = settings
        self.role = check_role(settings)
        #: A database other engines share: start-up must leave their running jobs alone.
        self.shared = bool(settings.engine.database_url)
        # autoload=False keeps the engine in `loading` (API up, submits queued, no worker): for
        # tests of the API and the queue alone, and for `start_models()` later.
        self._autoload = autoload
        self.secret = engine_secret(settings)
        self._models = models  # preloaded models (tests share one tiny set); None = load_models(cfg)
        self._step_hook = step_hook  # engine.service.worker.StepHook, from the composition root
        self._port = settings.engine.port if port is None else port
        data_dir = Path(settings.engine.data_dir).expanduser()
        self.data_dir = data_dir
        self.hub = EventHub()
        self.store = open_store(
            settings.engine.database_url,
            data_dir / DB_NAME,
            default_limits=default_limits(settings.limits),
            on_events=self.hub.notify,
        )
        self.files = ArtifactFiles(
            Path(settings.engine.artifacts_dir).expanduser()
            if settings.engine.artifacts_dir
            else data_dir / "artifacts"
        )
        self.link = WorkerLink()  # the worker, once the models are loaded
        self.rules = JobRules.for_models(settings.models)
        self.core = EngineCore(settings, self.store, self.files, self.hub, worker=self.link, rules=self.rules)
        self.worker: Any | None = None  # engine.service.worker.Worker once the models are loaded
        self.renderer: Any | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._load_task: asyncio.Task[None] | None = None
        self._listener: Any | None = None  # store.notify.Listener on a shared database
        self.port: int | None = None
        self.ready = asyncio.Event()

    @property
    def url(self) -> str:
        host = self.settings.engine.host
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.hub.bind(loop)
        self.hub.latest = self.store.last_event_id()
        # Alone on a SQLite file, every running job is this engine's own from before a crash; on a
        # shared database only the jobs whose lease lapsed are (the others are live workers').
        for event in self.store.recover_interrupted(MAX_ATTEMPTS, lapsed_only=self.shared):
            log.warning("job %s was interrupted: %s", event.job_id, event.data.get("reason"))
        # A shared artifacts folder holds other workers' scratch files: only old ones are a crash's.
        self.files.clean_tmp(older_than_s=self.settings.engine.job_timeout_s + 600 if self.shared else 0)
        if self.shared:
            self._listen(loop)
            self._tasks.append(
                asyncio.create_task(
                    reap_loop(self.core, self.settings.engine.lease_s, self._wake_worker), name="spooky-reap"
                )
            )
        app = build_app(self.core, self.secret)
        if not runs_api(self.role):
            app.middlewares.insert(0, worker_only)
        self._runner = EngineRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.engine.host, self._port)
        await site.start()
        sockets = [s for s in (site._server.sockets if site._server else [])]
        self.port = sockets[0].getsockname()[1] if sockets else self._port
        if not runs_worker(self.role):
            # No models to wait for: submits are checked with CLIP's tokenizer alone
            # (engine.models.clip_tokens, no torch).
            self.core.status = HealthStatus.READY
            self.ready.set()
            log.info("engine API on %s (role api: no models, no worker; health: ready)", self.url)
        else:
            log.info(
                "engine %s on %s (health: loading)", "worker" if self.role == "worker" else "API", self.url
            )
            if self._autoload:
                self.start_models()
        self._tasks.append(asyncio.create_task(self._sweep_loop(), name="spooky-sweep"))

    def _wake_worker(self) -> None:
        self.link.wake()

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hear other nodes' commits: new events, claimable jobs, cancels of running jobs."""
        from engine.service.store.notify import Listener

        def on_loop(fn: Any) -> Any:
            return lambda payload: loop.call_soon_threadsafe(fn)

        def on_events(payload: str) -> None:
            self.hub.notify(int(payload or 0))  # thread-safe; a reader then reads the store

        def cancel_asked() -> None:
            if self.worker is not None:
                self.worker.cancel_asked()

        self._listener = Listener(
            self.settings.engine.database_url,
            {
                "spooky_events": on_events,
                "spooky_jobs": on_loop(self._wake_worker),
                "spooky_cancel": on_loop(cancel_asked),
            },
            self.store.availability,
        )
        self._listener.start()

    def start_models(self) -> None:
        """Load the models in the background; the worker starts when they are ready."""
        self._load_task = asyncio.create_task(self._load(), name="spooky-load")

    def _build_renderer(self) -> Any:
        """Import torch and the pipeline, load the models (on a thread: the API keeps answering)."""
        from engine.pipeline.render import Renderer

        models = self._models
        if models is None:
            from engine.models.factory import load_models

            models = load_models(self.settings.models)
        renderer = Renderer(models, self.settings.pipeline)
        if renderer.factor != self.rules.canvas_factor:
            # Submits are checked against the factor the config names, on every node.
            raise ConfigError(
                f"the VQGAN loaded from [models] downsamples by {renderer.factor}, but "
                f"[models] vqgan = {self.settings.models.vqgan!r} is an f{self.rules.canvas_factor} VQGAN",
                hint="point vqgan_config/vqgan_ckpt at files of the architecture models.vqgan names",
            )
        return renderer

    async def _load(self) -> None:
        core = self.core
        started = time.monotonic()
        try:
            renderer = await run_in_daemon_thread(self._build_renderer, "spooky-load")
            from engine.service.worker import Worker  # torch is imported by now

            models = renderer.models
        except Exception as e:
            core.status, core.detail = HealthStatus.ERROR, f"models failed to load: {e}"
            log.exception("models failed to load; the engine stays up with health 'error'")
            return
        if core.status is not HealthStatus.LOADING:  # a stop arrived while loading
            return
        self.renderer = renderer
        core.device = str(models.device)
        core.preset = models.preset
        await core.refresh_estimates()
        self.worker = Worker(core, renderer, step_hook=self._step_hook)
        self.link.connect(self.worker)
        self.worker.start()
        core.status = HealthStatus.READY
        self.ready.set()
        log.info("models loaded in %.1f s: %s; engine ready", time.monotonic() - started, models.description)

    async def _sweep_loop(self) -> None:
        store = self.store
        while True:
            try:
                # One node at a time sweeps a shared database and artifacts folder; the others skip.
                if await self.core.db(store.try_lead, "sweep"):
                    try:
                        await self.core.sweep()
                    finally:
                        await self.core.db(store.release_lead, "sweep")
            except Exception:
                log.exception("artifact retention sweep failed")
            await asyncio.sleep(SWEEP_INTERVAL_S)

    async def drain(self) -> None:
        """Refuse new submits and let (or make) the running job stop; it stays queued."""
        if self.core.status in (HealthStatus.DRAINING, HealthStatus.STOPPED):
            return
        self.core.status = HealthStatus.DRAINING
        timeout = self.settings.engine.drain_timeout_s
        log.info("draining: waiting up to %.0f s for the running job", timeout)
        if self.worker is not None:
            try:
                await asyncio.wait_for(self.worker.drain(timeout), timeout + DRAIN_GRACE_S)
            except TimeoutError:
                log.error(
                    "the running job did not stop within %.0f s of the drain; exiting anyway", DRAIN_GRACE_S
                )

    @property
    def loading(self) -> bool:
        """True while the model load thread is still running (torch code that cannot be cancelled)."""
        return self._load_task is not None and not self._load_task.done()

    async def stop(self) -> None:
        await self.drain()
        self.core.status = HealthStatus.STOPPED
        if self.loading:
            # Exiting while torch builds models on another thread aborts the process from C++
            # (std::terminate), so give the load a bounded time to finish; it then sees the stop.
            log.info("waiting up to %.0f s for the model load under way", LOAD_WAIT_S)
            await asyncio.wait({self._load_task}, timeout=LOAD_WAIT_S)
        self.core.closing.set()
        self.hub.notify(self.hub.latest)  # wake event streams so they end
        tasks = [*self._tasks, *([self._load_task] if self._load_task else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._runner is not None:
            await self._runner.cleanup()
        if self._listener is not None:
            await asyncio.to_thread(self._listener.stop)
        self.core.close()
        self.store.close()
        log.info("engine stopped")

    async def __aenter__(self) -> EngineService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
