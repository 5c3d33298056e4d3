//! The agent: configuration → components → serve → drain on SIGTERM/SIGINT. Whatever stops
//! it from starting is a [`StartupError`], reported in one place ([`fail`]).

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use metadataproxy::admin::{self, Admin, Interception};
use metadataproxy::app::{App, StartupError};
use metadataproxy::config::{
    Args, Command, Config, EbpfCommand, Intercept, IptablesCommand, EXIT_CONFIG,
};
use metadataproxy::ebpf::KernelRedirect;
use metadataproxy::leftovers::LeftoverCheck;
use metadataproxy::netfilter::NatRules;
use metadataproxy::{notify, server, telemetry};

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        // clap prints `--help` to standard output and usage errors to standard error itself.
        Err(e) => {
            let code = if e.use_stderr() { EXIT_CONFIG } else { 0 };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    if args.healthcheck {
        return healthcheck(&args.admin_addr);
    }
    if let Some(command) = &args.command {
        return maintenance(command, &args);
    }
    // Logging is set up inside `start`; its writer thread is flushed when `logs` goes, after
    // the last line (a failed start's included).
    let mut logs = None;
    let code = match start(args, &mut logs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    };
    drop(logs);
    code
}

/// The one report of a failed start: logged (once logging is up), printed to standard error,
/// and the exit status (64 for an invalid setting).
fn fail(e: &StartupError) -> ExitCode {
    tracing::error!(error = %e, "cannot start");
    eprintln!("metadataproxy: {e}");
    ExitCode::from(e.exit_code())
}

fn start(args: Args, logs: &mut Option<telemetry::LogGuard>) -> Result<(), StartupError> {
    let mut config = Config::try_from(args)?;
    metadataproxy::app::read_role_policy(&mut config)?;
    *logs = Some(telemetry::init(config.log));
    raise_open_files_limit(config.limits.max_connections);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(StartupError::Runtime)?
        .block_on(run(config))
}

async fn run(config: Config) -> Result<(), StartupError> {
    let exporters = telemetry::export::install(&config.telemetry, telemetry::hostname());
    tokio::spawn(telemetry::report_dropped_lines());
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartupError::Listen {
            addr: config.listen,
            source,
        })?;
    let listen = listener.local_addr().unwrap_or(config.listen);
    let container_listener = match config.container_endpoint.listen {
        None => None,
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartupError::ContainerListen { addr, source })?,
        ),
    };
    let container_listen = container_listener
        .as_ref()
        .and_then(|l| l.local_addr().ok());
    // Both listeners before interception: a start-up that fails must not leave the kernel
    // redirect pointing at an agent that is not there.
    let admin_listener = match config.telemetry.admin_addr {
        None => None,
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartupError::AdminListen { addr, source })?,
        ),
    };
    let mut redirect = None;
    let mut nat_rules = None;
    match &config.intercept {
        Intercept::None => {}
        Intercept::Ebpf(ebpf) => {
            let parents = metadataproxy::identity::DockerLookup::new(config.docker.clone())
                .settle_container_parents(
                    ebpf.container_cgroups.as_deref(),
                    std::time::Duration::from_secs(2),
                )
                .await
                .map_err(|e| StartupError::Ebpf(e.into()))?;
            let installed = KernelRedirect::install(ebpf, &parents, listen, container_listen)
                .map_err(StartupError::Ebpf)?;
            redirect = Some(Arc::new(installed));
        }
        Intercept::Iptables(ipt) => {
            // Podman's bridges are not Docker's: refuse rules that would miss its containers
            // (unknown engine, as at boot before it runs: the rules as configured).
            let engine = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                metadataproxy::identity::DockerLookup::new(config.docker.clone()).podman_engine(),
            )
            .await;
            if let Ok(Ok(engine)) = engine {
                metadataproxy::netfilter::check_engine(ipt, engine.as_deref())
                    .map_err(StartupError::Iptables)?;
            }
            let installed =
                NatRules::install(ipt, listen, container_listen).map_err(StartupError::Iptables)?;
            nat_rules = Some(Arc::new(installed));
        }
    }
    if let Some(redirect) = &redirect {
        // Started before Docker: docker0 gets its address when dockerd starts, just before it
        // starts containers with restart policies.
        let redirect = redirect.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
            while {
                tick.tick().await;
                redirect.follow_docker0()
            } {}
        });
    }
    if let Some(redirect) = &redirect {
        // Container parents can appear or be recreated after start-up (systemd slices).
        let redirect = redirect.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
            loop {
                tick.tick().await;
                redirect.refresh_parents();
            }
        });
    }
    if let Some(rules) = &nat_rules {
        // A `nft flush ruleset` or a firewall reload can drop the table: put it back.
        let rules = rules.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let rules = rules.clone();
                let _ = tokio::task::spawn_blocking(move || rules.repair()).await;
            }
        });
    }
    let leftovers = LeftoverCheck::for_config(&config);
    leftovers.warn();
    let kernel = redirect
        .clone()
        .map(|k| k as Arc<dyn metadataproxy::identity::kernel::KernelIdentity>);
    let app = match App::build(&config, kernel, &exporters).await {
        Ok(app) => app,
        Err(e) => {
            // Interception is in place: take it away again, as at a shutdown.
            if let Some(redirect) = &redirect {
                redirect.shutdown();
            }
            if let Some(rules) = &nat_rules {
                rules.shutdown();
            }
            return Err(e);
        }
    };
    let admin_addr = match admin_listener {
        Some(l) => {
            let bound = l.local_addr().ok();
            let interception = match (&redirect, &nat_rules) {
                (Some(k), _) => Interception::Ebpf(k.clone()),
                (None, Some(r)) => Interception::Iptables(r.clone()),
                (None, None) => Interception::External,
            };
            let admin = Admin::new(
                app.readiness.clone(),
                exporters.prometheus.clone(),
                interception,
                leftovers,
            );
            tokio::spawn(admin::serve(l, admin));
            bound
        }
        None => None,
    };
    let shutdown = shutdown_signal();
    tracing::info!(
        listen = %listen,
        container_endpoint = container_listen.map(|a| a.to_string()),
        admin = admin_addr.map(|a| a.to_string()),
        upstream = ?config.upstream,
        docker = %config.docker,
        intercept = match config.intercept {
            Intercept::None => "none",
            Intercept::Iptables(_) => "iptables",
            Intercept::Ebpf(_) => "ebpf",
        },
        version = env!("CARGO_PKG_VERSION"),
        "metadataproxy ready"
    );
    // Interception is in place (and Docker need not be up): a `Type=notify` unit ordered
    // `Before=docker.service` lets Docker start its containers only now.
    match notify::notify_from_env(notify::READY) {
        Ok(true) => tracing::info!("readiness sent to the service manager (NOTIFY_SOCKET)"),
        Ok(false) => {}
        Err(e) => tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)"),
    }
    let listeners = std::iter::once((listener, server::Endpoint::Metadata))
        .chain(container_listener.map(|l| (l, server::Endpoint::ContainerCredentials)))
        .collect();
    server::serve_endpoints(listeners, app.services, shutdown, config.shutdown_grace).await;
    if let Some(redirect) = redirect {
        redirect.shutdown();
    }
    if let Some(rules) = nat_rules {
        // Waits for a repair in flight; none runs after it.
        let _ = tokio::task::spawn_blocking(move || rules.shutdown()).await;
    }
    Ok(())
}

/// `metadataproxy ebpf detach`, `metadataproxy iptables remove`: 0 once removed or when there
/// was nothing to remove, 1 with the reason otherwise.
fn maintenance(command: &Command, args: &Args) -> ExitCode {
    let result = match command {
        Command::Ebpf {
            action: EbpfCommand::Detach { pin_path },
        } => {
            let pin_path = std::path::PathBuf::from(
                pin_path
                    .as_deref()
                    .unwrap_or(args.ebpf_pin_path.as_str())
                    .trim(),
            );
            if !pin_path.is_absolute() {
                eprintln!(
                    "metadataproxy: ebpf detach: the pin path must be absolute, got {}",
                    pin_path.display()
                );
                return ExitCode::from(EXIT_CONFIG as u8);
            }
            metadataproxy::ebpf::remove_pins(&pin_path)
                .map(|removed| match removed {
                    None => format!(
                        "nothing to remove: no pin directory at {}",
                        pin_path.display()
                    ),
                    Some(links) if links.is_empty() => format!(
                        "no program was attached from {}; removed what was pinned there",
                        pin_path.display()
                    ),
                    Some(links) => format!(
                        "detached and unpinned {} link(s) from {}: {}",
                        links.len(),
                        pin_path.display(),
                        links
                            .iter()
                            .filter_map(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })
                .map_err(|e| format!("ebpf detach: {e}"))
        }
        Command::Iptables {
            action: IptablesCommand::Remove,
        } => metadataproxy::netfilter::leftover::remove()
            .map(|removed| {
                if removed.is_empty() {
                    format!(
                        "nothing to remove: no table {} (ip or ip6)",
                        metadataproxy::netfilter::TABLE
                    )
                } else {
                    format!("removed table {}", removed.join(", table "))
                }
            })
            .map_err(|e| format!("iptables remove: {e}")),
    };
    match result {
        Ok(message) => {
            println!("metadataproxy: {message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("metadataproxy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--healthcheck`: `GET /readyz` on the admin listener, 0 when it answers 200.
fn healthcheck(admin_addr: &str) -> ExitCode {
    use std::io::{Read, Write};
    use std::time::Duration;
    let Ok(addr) = admin_addr.trim().parse::<std::net::SocketAddr>() else {
        eprintln!("metadataproxy: --healthcheck needs ADMIN_ADDR as ip:port, got {admin_addr:?}");
        return ExitCode::FAILURE;
    };
    let result = (|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            s,
            "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        Ok(answer)
    })();
    match result {
        Ok(answer) if answer.starts_with("HTTP/1.1 200") => ExitCode::SUCCESS,
        Ok(answer) => {
            let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
            eprintln!("metadataproxy: not ready: {}", body.trim());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("metadataproxy: admin listener {addr} unreachable: {e}");
            ExitCode::FAILURE
        }
    }
}

/// MAX_CONNECTIONS needs as many file descriptors, plus some: the soft limit is raised to the
/// hard one (often 1024 soft by default), with a warning when even that is too low.
fn raise_open_files_limit(max_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
        tracing::warn!(soft, hard, "could not raise the open files limit");
    }
    let limit = getrlimit(Resource::RLIMIT_NOFILE)
        .map(|(s, _)| s)
        .unwrap_or(soft);
    if limit < max_connections as u64 + 256 {
        tracing::warn!(
            open_files_limit = limit,
            max_connections,
            "the open files limit is below MAX_CONNECTIONS + 256: connections past it are refused by the kernel"
        );
    }
}

/// The handlers are installed when this is called, not when the future is first polled: a
/// SIGTERM that arrives right after "ready" (and `READY=1`) drains instead of killing.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown requested");
    }
}
