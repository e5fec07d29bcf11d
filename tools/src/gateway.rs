//! `reservoir gateway`: the HTTP/JSON gateway (docs/gateway.md) in front of one or more
//! servers, with embedded defaults that work against a local `reservoir serve`. Settings come
//! from flags, then environment variables (`RESERVOIR_GATEWAY_*`, `RESERVOIR_CA`), then the
//! defaults.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context as _;
use clap::Args;
use reservoir_net::gateway::{GatewayOptions, REQUEST_TIMEOUT_MS_DEFAULT};

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// The servers: host:port, comma-separated (a primary and its standbys, tried in order)
    #[arg(long, value_name = "ADDR[,ADDR...]", env = "RESERVOIR_GATEWAY_UPSTREAM", default_value = "127.0.0.1:7878")]
    upstream: String,
    /// Where to listen for HTTP
    #[arg(long, value_name = "ADDR", env = "RESERVOIR_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The TLS name to check the servers' certificates against [default: each upstream's host]
    #[arg(long, value_name = "NAME", env = "RESERVOIR_GATEWAY_SERVER_NAME")]
    server_name: Option<String>,
    /// How long one HTTP request may take, upstream retries included
    #[arg(long, value_name = "MS", env = "RESERVOIR_GATEWAY_REQUEST_TIMEOUT_MS", default_value_t = REQUEST_TIMEOUT_MS_DEFAULT)]
    request_timeout_ms: u64,
}

/// The gateway's options from its arguments and the CA file (the global `--ca`).
pub fn options(args: &GatewayArgs, ca: &Path) -> anyhow::Result<GatewayOptions> {
    let ca_pem = std::fs::read(ca).with_context(|| format!("read the CA certificate {} (--ca)", ca.display()))?;
    let mut options = GatewayOptions::new(ca_pem);
    options.upstreams =
        args.upstream.split(',').map(|text| text.trim().to_owned()).filter(|text| !text.is_empty()).collect();
    anyhow::ensure!(!options.upstreams.is_empty(), "--upstream names no server");
    options.listen = args.listen;
    options.server_name = args.server_name.clone();
    anyhow::ensure!(args.request_timeout_ms > 0, "--request-timeout-ms must be above 0");
    options.request_timeout_ms = args.request_timeout_ms;
    Ok(options)
}

pub fn run_gateway(args: GatewayArgs, ca: &Path) -> anyhow::Result<()> {
    let options = options(&args, ca)?;
    crate::serve::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("reservoir-gw").build()?;
    runtime.block_on(async move {
        let upstreams = options.upstreams.join(",");
        let gateway = reservoir_net::gateway::start(options).await.context("start the gateway")?;
        println!("reservoir: gateway on {} for {upstreams}", gateway.local_addr());
        use std::io::Write as _;
        std::io::stdout().flush()?;
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("interrupted: shutting down"),
            _ = terminate.recv() => tracing::info!("terminated: shutting down"),
        }
        gateway.shutdown().await.context("shut down")?;
        println!("reservoir: gateway stopped");
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: GatewayArgs,
    }

    #[test]
    fn embedded_defaults_work_against_a_local_serve() {
        let directory = tempfile::tempdir().unwrap();
        let ca = directory.path().join("ca.pem");
        reservoir_net::tls::ensure_generated(directory.path(), &[]).unwrap();
        std::fs::copy(reservoir_net::tls::ca_path(directory.path()), &ca).unwrap();
        let parsed = Wrapper::try_parse_from(["gateway"]).unwrap();
        let defaults = options(&parsed.args, &ca).unwrap();
        assert_eq!(defaults.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(defaults.upstreams, vec!["127.0.0.1:7878".to_owned()]);
        assert_eq!(defaults.request_timeout_ms, REQUEST_TIMEOUT_MS_DEFAULT);
        let parsed = Wrapper::try_parse_from([
            "gateway",
            "--upstream",
            "10.0.0.1:7878, 10.0.0.2:7878",
            "--listen",
            "0.0.0.0:80",
        ])
        .unwrap();
        let flags = options(&parsed.args, &ca).unwrap();
        assert_eq!(flags.upstreams.len(), 2);
        assert_eq!(flags.listen.port(), 80);
        assert!(options(&parsed.args, &directory.path().join("missing.pem")).is_err());
    }
}
