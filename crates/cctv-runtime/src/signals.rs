//! Shutdown on SIGTERM / SIGINT. Installed only by binaries.

use tokio_util::sync::CancellationToken;

/// Returns a token cancelled at the first SIGTERM or SIGINT. A second signal
/// exits the process at once with status 130. The handlers are installed
/// before this returns (not in the task that waits for them), so a signal
/// that arrives at any later moment is a graceful shutdown, never the
/// default disposition.
pub fn shutdown_on_signals() -> CancellationToken {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let trigger = token.clone();
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return token;
    };
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
        tracing::info!("shutdown requested; a second signal exits at once");
        trigger.cancel();
        tokio::select! {
            _ = terminate.recv() => {},
            _ = interrupt.recv() => {},
        }
        std::process::exit(130);
    });
    token
}
