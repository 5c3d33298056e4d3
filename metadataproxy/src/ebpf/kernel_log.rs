//! The kernel program's debug events (aya-log) in the agent's `tracing` output, under the
//! target [`LOG_TARGET`] (`metadataproxy::kernel`): a redirect decision, a refused IPv6
//! metadata connect, a failed map insert.
//!
//! Off unless the agent logs that target at debug (`LOG_LEVEL=debug`). aya-log's level is a
//! global in the object's read-only data, written when the object is loaded: off, it is 0, and
//! the verifier, which reads a frozen map's values as constants, removes the logging code from
//! the programs, so a connect costs what it did without it. What remains when off: the log
//! ring buffer (128 KiB of kernel memory, never written) and nothing reading it.
//!
//! On, each event is one record in that ring buffer; a task reads it and hands the records to
//! tracing-log's [`LogTracer`](tracing_log::LogTracer), which makes them `tracing` events. A
//! full ring buffer (no reader: the agent stopped with `EBPF_ON_SHUTDOWN=keep`) drops events.

use aya::{Ebpf, EbpfLoader};
use metadataproxy_common::LOG_TARGET;

/// The kernel's log level for this agent: aya-log's debug when the agent logs [`LOG_TARGET`]
/// at debug and has a runtime to read the records on, else 0 (nothing).
pub(super) fn level() -> u8 {
    let wanted = tracing::enabled!(target: LOG_TARGET, tracing::Level::DEBUG);
    if wanted && tokio::runtime::Handle::try_current().is_ok() {
        aya_log::Level::Debug as u8
    } else {
        0
    }
}

/// Writes `level` as aya-log's level in the object `loader` loads (always: the object's own
/// default is everything).
pub(super) fn set_level<'a>(loader: &mut EbpfLoader<'a>, level: &'a u8) {
    loader.override_global(aya_log::LEVEL, level, true);
}

/// Reads the kernel's log records from `bpf`'s ring buffer into `tracing`, on a task of the
/// current runtime, for as long as the runtime runs. Only with a [`level`] other than 0.
pub(super) fn forward(bpf: &mut Ebpf) {
    let logger = match aya_log::EbpfLogger::init_with_logger(bpf, tracing_log::LogTracer::new()) {
        Ok(logger) => logger,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the kernel program's log: its events are not logged");
            return;
        }
    };
    // Deprecated for types whose fd may change or close while registered; its replacement is
    // `unsafe`, which this crate forbids. The logger owns its ring buffer's fd (an `OwnedFd` in
    // aya's `MapData`) and keeps it open, unchanged, for as long as `AsyncFd` owns the logger.
    #[allow(deprecated)]
    let registered = tokio::io::unix::AsyncFd::with_interest(logger, tokio::io::Interest::READABLE);
    let mut ring = match registered {
        Ok(ring) => ring,
        Err(e) => {
            tracing::warn!(error = %e, "cannot poll the kernel program's log: its events are not logged");
            return;
        }
    };
    tokio::spawn(async move {
        loop {
            let Ok(mut ready) = ring.readable_mut().await else {
                return;
            };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    });
    tracing::debug!(
        target = LOG_TARGET,
        "the kernel program's debug events are logged"
    );
}

#[cfg(test)]
mod tests {
    use crate::config::{LogConfig, LogFormat};

    fn level_with(level: tracing::Level, runtime: bool) -> u8 {
        let subscriber = crate::telemetry::subscriber(
            LogConfig {
                level,
                format: LogFormat::Json,
            },
            std::io::sink,
        );
        let _guard = tracing::subscriber::set_default(subscriber);
        if !runtime {
            return super::level();
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let _entered = rt.enter();
        super::level()
    }

    #[test]
    fn the_kernel_logs_at_debug_only_when_the_agent_does_and_can_read_it() {
        assert_eq!(
            level_with(tracing::Level::DEBUG, true),
            aya_log::Level::Debug as u8
        );
        assert_eq!(level_with(tracing::Level::INFO, true), 0);
        assert_eq!(level_with(tracing::Level::DEBUG, false), 0);
    }
}
