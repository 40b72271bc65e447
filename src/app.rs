//! Wiring: open the store, settle the secrets, start the write path, bind, serve until told to
//! stop. Tests call `Application::build` with port 0 and talk to `port()`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::auth::{Keys, generate_secret};
use crate::config::Config;
use crate::http::{AppState, router};
use crate::realtime::{self, presence::Presence};
use crate::storage::{self, DynStore};
use crate::write_path::{ChangeBus, WritePath};

pub struct Application {
    listener: TcpListener,
    state: AppState,
    /// The Socket.IO layer, wrapped around the REST router at `/socket.io/`.
    realtime: socketioxide::layer::SocketIoLayer,
    /// The Socket.IO server, closed first on shutdown.
    io: socketioxide::SocketIo,
}

/// The JWT secret: configured, else the one kept in the database, else a new one kept there.
/// Returns it and whether it was generated just now (to be printed once).
pub async fn jwt_secret(config: &Config, store: &DynStore) -> anyhow::Result<(String, bool)> {
    if let Some(s) = &config.jwt_secret {
        return Ok((s.clone(), false));
    }
    if let Some(s) = store.setting("jwt_secret").await? {
        return Ok((s, false));
    }
    let fresh = generate_secret();
    let kept = store.setting_or_insert("jwt_secret", &fresh).await?;
    let generated = kept == fresh;
    Ok((kept, generated))
}

impl Application {
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let store = storage::open(&config).await?;
        Self::with_store(config, store).await
    }

    /// Builds on an open store (tests share one store between a server and its assertions).
    pub async fn with_store(config: Config, store: DynStore) -> anyhow::Result<Self> {
        // TLS for outgoing requests (webhooks, the Graph API) uses ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (secret, generated) = jwt_secret(&config, &store).await?;
        if generated {
            // Printed once, on the start that created it; it is kept in the database.
            eprintln!("generated CONFAB_JWT_SECRET (kept in the database): {secret}");
        }
        let database_id = store
            .setting_or_insert("database_id", &uuid::Uuid::now_v7().to_string())
            .await?;
        let bus = ChangeBus::new();
        let workers = config
            .write_workers
            .unwrap_or_else(|| crate::write_path::default_workers(store.backend()));
        let writes = WritePath::start(
            store.clone(),
            bus.clone(),
            workers,
            config.max_batch,
            config.db_timeout,
        );
        let listener = TcpListener::bind(config.addr)
            .await
            .map_err(|e| anyhow::anyhow!("CONFAB_ADDR: cannot listen on {}: {e}", config.addr))?;
        let (presence, global, local) = Presence::new(config.presence_grace);
        let state = AppState::new(
            store,
            writes,
            bus,
            Keys::new(&secret),
            config,
            database_id,
            Arc::new(presence),
        );
        let (realtime, io, hub) = realtime::start(state.clone()).await?;
        realtime::start_presence(io.clone(), hub.clone(), global, local);
        let _ = state.realtime.set(Arc::downgrade(&hub));
        crate::jobs::start(&state)?;
        // The hub lives as long as the server: the layer's handlers hold it.
        Ok(Application {
            listener,
            state,
            realtime,
            io,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully: stops accepting, closes
    /// every socket's transport (clients see `transport close` and reconnect), finishes
    /// the requests in flight (their writes commit in the write path's batches and are
    /// answered), and returns.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let io = self.io;
        let writes = self.state.writes.clone();
        let hub = self.state.realtime.get().cloned().unwrap_or_default();
        let app = router(self.state)
            .layer(self.realtime)
            .into_make_service_with_connect_info::<SocketAddr>();
        let stopping = async move {
            shutdown.await;
            // Sockets first: their transports are closed (the client sees `transport close`
            // and reconnects by itself, to another node or to this one restarted, then
            // catches up with /v1/sync); a long-polling request would otherwise hold the
            // shutdown until its poll ends.
            io.close().await;
            // Let the transports' close frames go out before the process ends.
            if let Some(hub) = hub.upgrade() {
                let gone = hub.all_sockets_gone();
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), gone).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        axum::serve(self.listener, app)
            .with_graceful_shutdown(stopping)
            .await?;
        // Socket events may still be writing: their batches finish before the process ends.
        if !writes.drain(std::time::Duration::from_secs(10)).await {
            tracing::warn!("stopped with writes still in flight");
        }
        Ok(())
    }
}
