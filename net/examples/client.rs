//! The client library, runnable on its own: starts a server in a temporary data directory
//! (as `reservoir serve` would), connects with the tenant token it printed, receives stock,
//! reserves it with pipelined batched calls, and retries one with the same id.
//!
//! `cargo run -p reservoir-net --example client`

use reservoir_net::client::{Client, ClientOptions};
use reservoir_net::server::{self, ServerOptions};
use reservoir_net::{Operation, OperationResult, WireLine};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A server of our own (a real one: QUIC on loopback, durable WAL, generated certificates).
    let directory = tempfile::tempdir()?;
    let mut options = ServerOptions::new(directory.path().to_owned());
    options.listen = "127.0.0.1:0".parse()?;
    let server = server::start(options).await?;
    let token = server.first_start().expect("a new data directory").demo_token.clone();
    let ca = std::fs::read(reservoir_net::tls::ca_path(directory.path()))?;

    // What an order service does: connect (several endpoints may be given: primary, standbys).
    let client = Client::connect(ClientOptions::new(vec![server.local_addr().to_string()], ca, token)).await?;
    let receive =
        Operation::Receive { operation: "asn-77".into(), sku: "SKU-1".into(), location: "DC1".into(), quantity: 100 };
    println!("receive: {}", client.call(receive).await?.code().name());

    // Concurrent calls are batched into shared requests and pipelined on the connection.
    let mut calls = Vec::new();
    for order in 0..10 {
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            let lines = vec![WireLine { sku: "SKU-1".into(), location: "DC1".into(), quantity: 12 }];
            let reserve = Operation::Reserve {
                reservation: format!("order-{order}"),
                ttl_ms: 900_000,
                allow_partial: false,
                lines,
            };
            client.call(reserve).await
        }));
    }
    for (order, call) in calls.into_iter().enumerate() {
        println!("order-{order}: {}", call.await??.code().name());
    }

    // A retry with the same id returns the original outcome; it never reserves twice.
    let lines = vec![WireLine { sku: "SKU-1".into(), location: "DC1".into(), quantity: 12 }];
    let retry = Operation::Reserve { reservation: "order-0".into(), ttl_ms: 900_000, allow_partial: false, lines };
    println!("order-0 again: {}", client.call(retry).await?.code().name());
    if let OperationResult::Sku(Ok(summary)) = client.call(Operation::GetSku { sku: "SKU-1".into() }).await? {
        println!(
            "SKU-1: on_hand {} reserved {} available {}",
            summary.total.on_hand,
            summary.total.reserved,
            summary.total.available()
        );
    }
    client.close().await;
    server.shutdown().await?;
    Ok(())
}
