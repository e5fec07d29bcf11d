//! The command-line client (what redis-cli is to Redis): one operation per invocation against
//! a running server, human output or `--json`, and exit codes scripts can rely on:
//!
//! | exit | meaning |
//! | ---: | --- |
//! | 0 | done (`ok`, or `ok_partial` for a reserve that allowed it) |
//! | 1 | the server refused the operation, or some rows of an import (its result codes are printed) |
//! | 2 | bad usage (clap; a malformed `--op-id` too) |
//! | 3 | no answer: cannot connect, not authenticated, protocol or file error (`--json`: an object with `error`) |

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use reservoir_engine::{ReservationState, ResultCode};
use reservoir_net::client::{Client, ClientOptions};
use reservoir_net::import::ImportFormat;
use reservoir_net::{Operation, OperationKind, OperationResult, Role, Service, WireImportRow, WireLine};
use serde_json::json;

/// Where a SKU is when a line or item names no location (`SKU` instead of `SKU@LOCATION`).
use reservoir_net::import::LOCATION_DEFAULT;
/// Rows per import request (the protocol's `IMPORT_ROWS_MAX`); a larger file is sent in parts.
pub const IMPORT_ROWS_PER_REQUEST_MAX: usize = reservoir_engine::IMPORT_ROWS_MAX;
/// Bytes of an import file read at most (the whole file is parsed before anything is sent).
pub const IMPORT_FILE_BYTES_MAX: u64 = 1 << 30;

#[derive(Debug, Args, Clone)]
pub struct Connection {
    /// The server(s): host:port, comma-separated (a primary and its standbys)
    #[arg(long, global = true, value_name = "ADDR", env = "RESERVOIR_SERVER", default_value = "127.0.0.1:7878")]
    server: String,
    /// The bearer token (a tenant's, or the admin token for `tenant`)
    #[arg(long, global = true, value_name = "TOKEN", env = "RESERVOIR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The CA certificate that signed the server's [default: ./reservoir-data/tls/ca.pem]
    #[arg(long, global = true, value_name = "FILE", env = "RESERVOIR_CA")]
    ca: Option<PathBuf>,
    /// Print one JSON object instead of text
    #[arg(long, global = true)]
    json: bool,
    /// Check that the token is this tenant's (tenant operations act on the token's tenant)
    #[arg(long, global = true, value_name = "NAME")]
    tenant: Option<String>,
}

impl Connection {
    /// `--ca`, or the CA of `./reservoir-data` (what a local `reservoir serve` made).
    pub fn ca_path(&self) -> PathBuf {
        self.ca
            .clone()
            .unwrap_or_else(|| reservoir_net::tls::ca_path(std::path::Path::new(crate::serve::DATA_DIRECTORY_DEFAULT)))
    }
}

/// `SKU[@LOCATION]:QTY`.
fn parse_line(text: &str) -> Result<WireLine, String> {
    let (item, quantity) = text.rsplit_once(':').ok_or_else(|| format!("{text:?}: expected SKU[@LOCATION]:QTY"))?;
    let quantity = quantity.parse::<i64>().map_err(|_| format!("{text:?}: the quantity is not a number"))?;
    let (sku, location) = parse_item(item);
    Ok(WireLine { sku, location, quantity })
}

/// An operation id (`--op-id`): a name the server takes (1 to 64 bytes, printable, no white
/// space), refused before anything is sent (exit 2). Regression (review, tenth session): a
/// bad one was found only by the server or after connecting, and exited 1 or 3.
fn parse_op_id(text: &str) -> Result<String, String> {
    match reservoir_engine::OperationId::new(text) {
        Ok(_) => Ok(text.to_owned()),
        Err(why) => Err(format!("{text:?} is not an operation id ({why:?}): 1 to 64 printable bytes, no white space")),
    }
}

/// An import's `--op-id`: an operation id with no `#`, which names the import's parts.
fn parse_import_op_id(text: &str) -> Result<String, String> {
    let separator = reservoir_net::gateway::api::IMPORT_PART_SEPARATOR;
    if text.contains(separator) {
        return Err(format!("{text:?}: an import's id may not contain {separator:?}, which names its parts"));
    }
    parse_op_id(text)
}

/// `SKU[@LOCATION]`.
fn parse_item(text: &str) -> (String, String) {
    match text.split_once('@') {
        Some((sku, location)) => (sku.to_owned(), location.to_owned()),
        None => (text.to_owned(), LOCATION_DEFAULT.to_owned()),
    }
}

use crate::time::parse_duration_ms;

#[derive(Debug, Args)]
pub struct ReserveArgs {
    /// The reservation id (the idempotency key: a retry with it returns the first outcome)
    #[arg(long)]
    id: String,
    /// SKU[@LOCATION]:QTY, once per order line
    #[arg(long = "line", value_name = "SKU[@LOC]:QTY", required = true, value_parser = parse_line)]
    lines: Vec<WireLine>,
    /// Time to live: the engine releases the reservation when it passes
    #[arg(long, default_value = "15m", value_parser = parse_duration_ms)]
    ttl: u64,
    /// Reserve what is available per line instead of all or nothing
    #[arg(long)]
    partial: bool,
}

#[derive(Debug, Args)]
pub struct SettleArgs {
    /// The reservation id
    #[arg(long)]
    id: String,
    /// Only these lines and quantities (default: everything still reserved)
    #[arg(long = "line", value_name = "SKU[@LOC]:QTY", value_parser = parse_line)]
    lines: Vec<WireLine>,
    /// The operation id (idempotency key; default: a new random one, printed)
    #[arg(long, value_parser = parse_op_id)]
    op_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExtendArgs {
    #[arg(long)]
    id: String,
    /// The new time to live, from now
    #[arg(long, value_parser = parse_duration_ms)]
    ttl: u64,
    #[arg(long, value_parser = parse_op_id)]
    op_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReceiveArgs {
    /// SKU[@LOCATION]
    item: String,
    quantity: i64,
    #[arg(long, value_parser = parse_op_id)]
    op_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct AdjustArgs {
    /// SKU[@LOCATION]
    item: String,
    /// + or - units
    #[arg(allow_hyphen_values = true)]
    delta: i64,
    /// Why (damage, found, ...)
    #[arg(long)]
    reason: String,
    #[arg(long, value_parser = parse_op_id)]
    op_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct SetStockArgs {
    /// SKU[@LOCATION]
    item: String,
    /// The counted on_hand
    on_hand: i64,
    /// Only if on_hand is this now (compare-and-set, for cycle counts)
    #[arg(long)]
    expected: Option<i64>,
    #[arg(long, value_parser = parse_op_id)]
    op_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct MoveArgs {
    sku: String,
    from: String,
    to: String,
    quantity: i64,
    #[arg(long, value_parser = parse_op_id)]
    op_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// CSV with a header (sku,location,on_hand[,safety_stock,backorder_limit]) or JSON lines
    /// with those fields (a tenant export of `reservoir restore --tenant` works as it is)
    file: PathBuf,
    /// The operation id (idempotency key; a file over 10,000 rows uses ID-1, ID-2, ...)
    #[arg(long, value_parser = parse_import_op_id)]
    op_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct StockArgs {
    sku: String,
}

#[derive(Debug, Args)]
pub struct ReservationArgs {
    id: String,
}

#[derive(Debug, Args)]
pub struct TenantArgs {
    #[command(subcommand)]
    command: TenantCommand,
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant and print its first token (shown once)
    Add { name: String },
    /// List tenants and how many live tokens each has
    List,
    /// Issue a new token for a tenant and revoke its earlier ones (shown once)
    RotateToken { name: String },
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Mint a new admin or replication token; the earlier ones keep working (shown once)
    Issue(TokenTarget),
    /// Mint a new admin or replication token and revoke the earlier ones (shown once)
    Rotate(TokenTarget),
}

#[derive(Debug, Args)]
pub struct TokenTarget {
    /// Whose token: the operator's (admin) or the standbys' (replication)
    pub service: ServiceName,
    /// Offline: the data directory of a stopped primary (a lost admin token). Without it,
    /// asks the running server (`--server`, with the admin `--token`)
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl TokenCommand {
    /// The target and whether the earlier tokens are revoked.
    pub fn parts(&self) -> (&TokenTarget, bool) {
        match self {
            TokenCommand::Issue(target) => (target, false),
            TokenCommand::Rotate(target) => (target, true),
        }
    }
}

/// A service credential, as the command line names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ServiceName {
    Admin,
    Replication,
}

impl ServiceName {
    pub fn service(self) -> Service {
        match self {
            ServiceName::Admin => Service::Admin,
            ServiceName::Replication => Service::Replication,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Reserve stock for an order's lines (all or nothing unless --partial)
    Reserve(ReserveArgs),
    /// Commit (pick/ship) a reservation, whole or some lines
    Commit(SettleArgs),
    /// Release a reservation, whole or some lines
    Release(SettleArgs),
    /// Move a reservation's deadline
    Extend(ExtendArgs),
    /// Receive units at a location
    Receive(ReceiveArgs),
    /// Correct on_hand by + or - units, with a reason
    Adjust(AdjustArgs),
    /// Set on_hand to a counted value (cycle count), optionally compare-and-set
    SetStock(SetStockArgs),
    /// Move units between two locations of a SKU
    Move(MoveArgs),
    /// Import many items from a CSV or JSON-lines file, a result per row
    Import(ImportArgs),
    /// A SKU's stock per location and in total
    Stock(StockArgs),
    /// One reservation with its lines and state
    Reservation(ReservationArgs),
    /// Manage tenants and their tokens (admin token)
    Tenant(TenantArgs),
    /// A node's role, epoch, LSNs, replication lag and standbys (admin token; --json for all)
    Status,
    /// Promote the standby given by --server to primary of the next epoch (admin token)
    Promote,
    /// (`reservoir snapshot` without --data-dir) ask the running server for a snapshot now
    #[command(skip)]
    TakeSnapshot,
    /// (`reservoir token issue|rotate` without --data-dir) ask the running server for a new
    /// admin or replication token
    #[command(skip)]
    IssueServiceToken { service: Service, revoke_others: bool },
}

/// Exit code of a refusal by the server's engine.
pub const EXIT_REFUSED: u8 = 1;
/// Exit code when no answer was had.
pub const EXIT_NO_ANSWER: u8 = 3;

fn operation_id(given: &Option<String>, out: &mut Vec<(String, serde_json::Value)>) -> String {
    if let Some(id) = given {
        return id.clone();
    }
    use rand::Rng as _;
    let id = format!("cli-{:016x}", rand::thread_rng().gen::<u64>());
    out.push(("operation_id".into(), json!(id)));
    id
}

/// `available` of counters a server sent, saturating: the engine's `Counters::available`
/// trusts its own ledger, and values off the wire are anything (regression, review, tenth
/// session: `i64::MIN` on hand overflowed, a panic where overflow checks are on).
fn shown_available(counters: &reservoir_engine::Counters) -> i64 {
    counters.on_hand.saturating_sub(counters.reserved).saturating_sub(counters.safety_stock)
}

/// Exit code of a command line refused before anything is sent.
pub const EXIT_USAGE: u8 = 2;

/// Why `command` cannot go to `connection`'s servers, if it cannot: a command about one node
/// (`promote`, `status`, `snapshot`) names that node alone. Regression (review, tenth
/// session): given a primary and its standbys (`RESERVOIR_SERVER=primary,standby`), it went
/// to whichever the client ranked best: `promote` reached the primary, which answered "ok:
/// the primary", and nothing was promoted; with the primary down, the standby it picked was
/// promoted, whichever the operator meant.
fn node_command_refusal(connection: &Connection, command: &ClientCommand) -> Option<String> {
    let name = match command {
        ClientCommand::Promote => "promote",
        ClientCommand::Status => "status",
        ClientCommand::TakeSnapshot => "snapshot",
        _ => return None,
    };
    let servers = connection.server.split(',').filter(|text| !text.trim().is_empty()).count();
    (servers > 1)
        .then(|| format!("`{name}` is about one node: give --server that node's address alone ({servers} are given)"))
}

/// Runs one client command; returns the process exit code.
pub fn run(connection: Connection, command: ClientCommand) -> u8 {
    if let Some(why) = node_command_refusal(&connection, &command) {
        eprintln!("reservoir: {why}");
        return EXIT_USAGE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("reservoir: {error}");
            return EXIT_NO_ANSWER;
        }
    };
    let json = connection.json;
    match runtime.block_on(run_async(connection, command)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("reservoir: {error:#}");
            // A script reading `--json` gets an object here too (regression, review, tenth
            // session: it got nothing on stdout).
            if json {
                println!("{}", json!({ "error": format!("{error:#}"), "exit": EXIT_NO_ANSWER }));
            }
            EXIT_NO_ANSWER
        }
    }
}

async fn connect(connection: &Connection) -> anyhow::Result<Client> {
    // Trimmed: a secret mounted as a file and read into RESERVOIR_TOKEN keeps its trailing
    // newline, which made every handshake `unauthenticated` (regression, review).
    let token = connection
        .token
        .as_deref()
        .map(|token| token.trim().to_owned())
        .filter(|token| !token.is_empty())
        .context("no token: pass --token or set RESERVOIR_TOKEN")?;
    let ca = connection.ca_path();
    let ca_pem = std::fs::read(&ca).with_context(|| format!("read the CA certificate {} (--ca)", ca.display()))?;
    let endpoints =
        connection.server.split(',').map(|text| text.trim().to_owned()).filter(|text| !text.is_empty()).collect();
    let mut options = ClientOptions::new(endpoints, ca_pem, token);
    options.streams = 1;
    let client = Client::connect(options).await.context("connect")?;
    if let Some(expected) = &connection.tenant {
        match client.hello().await?.role {
            Role::Tenant { name } if &name == expected => {}
            Role::Tenant { name } => anyhow::bail!("the token is tenant {name:?}'s, not {expected:?}'s"),
            Role::Admin => anyhow::bail!("the token is the admin token: tenant operations need a tenant's"),
            Role::Replication => anyhow::bail!("the token is a replication token: tenant operations need a tenant's"),
        }
    }
    Ok(client)
}

async fn run_async(connection: Connection, command: ClientCommand) -> anyhow::Result<u8> {
    let client = connect(&connection).await?;
    let mut extra = Vec::new();
    let operations: Vec<Operation> = match &command {
        ClientCommand::Reserve(args) => vec![Operation::Reserve {
            reservation: args.id.clone(),
            ttl_ms: args.ttl,
            allow_partial: args.partial,
            lines: args.lines.clone(),
        }],
        ClientCommand::Commit(args) | ClientCommand::Release(args) => {
            let operation = operation_id(&args.op_id, &mut extra);
            let lines = (!args.lines.is_empty()).then(|| args.lines.clone());
            let reservation = args.id.clone();
            vec![if matches!(command, ClientCommand::Commit(_)) {
                Operation::Commit { operation, reservation, lines }
            } else {
                Operation::Release { operation, reservation, lines }
            }]
        }
        ClientCommand::Extend(args) => vec![Operation::Extend {
            operation: operation_id(&args.op_id, &mut extra),
            reservation: args.id.clone(),
            ttl_ms: args.ttl,
        }],
        ClientCommand::Receive(args) => {
            let (sku, location) = parse_item(&args.item);
            vec![Operation::Receive {
                operation: operation_id(&args.op_id, &mut extra),
                sku,
                location,
                quantity: args.quantity,
            }]
        }
        ClientCommand::Adjust(args) => {
            let (sku, location) = parse_item(&args.item);
            vec![Operation::Adjust {
                operation: operation_id(&args.op_id, &mut extra),
                sku,
                location,
                delta: args.delta,
                reason: args.reason.clone(),
            }]
        }
        ClientCommand::SetStock(args) => {
            let (sku, location) = parse_item(&args.item);
            vec![Operation::SetOnHand {
                operation: operation_id(&args.op_id, &mut extra),
                sku,
                location,
                expected: args.expected,
                on_hand: args.on_hand,
            }]
        }
        ClientCommand::Move(args) => vec![Operation::Move {
            operation: operation_id(&args.op_id, &mut extra),
            sku: args.sku.clone(),
            from: args.from.clone(),
            to: args.to.clone(),
            quantity: args.quantity,
        }],
        ClientCommand::Import(args) => {
            let rows = read_import(&args.file)?;
            let base = operation_id(&args.op_id, &mut extra);
            // The parts' ids are the gateway's (`ID#1`, `ID#2`, ...), so no id names a part.
            let separator = reservoir_net::gateway::api::IMPORT_PART_SEPARATOR;
            assert!(!base.contains(separator), "refused by parse_import_op_id; a generated id has none");
            let chunks: Vec<_> = rows.chunks(IMPORT_ROWS_PER_REQUEST_MAX).collect();
            let single = chunks.len() == 1;
            chunks
                .into_iter()
                .enumerate()
                .map(|(index, chunk)| Operation::Import {
                    operation: if single { base.clone() } else { format!("{base}{separator}{}", index + 1) },
                    rows: chunk.to_vec(),
                })
                .collect()
        }
        ClientCommand::Stock(args) => vec![Operation::GetSku { sku: args.sku.clone() }],
        ClientCommand::TakeSnapshot => vec![Operation::TakeSnapshot],
        ClientCommand::IssueServiceToken { service, revoke_others } => {
            vec![Operation::IssueServiceToken { service: *service, revoke_others: *revoke_others }]
        }
        ClientCommand::Status => vec![Operation::Status],
        ClientCommand::Promote => vec![Operation::Promote],
        ClientCommand::Reservation(args) => vec![Operation::GetReservation { reservation: args.id.clone() }],
        ClientCommand::Tenant(args) => match &args.command {
            TenantCommand::Add { name } => vec![
                Operation::CreateTenant { name: name.clone() },
                Operation::IssueToken { tenant: name.clone(), revoke_others: false },
            ],
            TenantCommand::List => vec![Operation::ListTenants],
            TenantCommand::RotateToken { name } => {
                vec![Operation::IssueToken { tenant: name.clone(), revoke_others: true }]
            }
        },
    };
    // A generated id is said with any failure: with no answer, the outcome is unknown, and a
    // retry with the same id gets the original outcome where a new id would apply it twice.
    // Regression (review): the id was printed only after an answer, so exactly the run that
    // needed a retry lost it.
    let generated =
        extra.iter().find(|(key, _)| key == "operation_id").and_then(|(_, id)| id.as_str().map(str::to_owned));
    let failed = |parts_answered: Option<usize>| {
        let parts = parts_answered.map(|count| format!(", {count} import parts answered before")).unwrap_or_default();
        match &generated {
            Some(id) => format!(
                "request (operation id {id}{parts}: retry with --op-id {id} to get the outcome without applying it \
                 twice)"
            ),
            None => format!("request{parts}"),
        }
    };
    // One import request per 10,000 rows; everything else is one request.
    let mut results = Vec::new();
    let mut lsn = 0;
    if matches!(command, ClientCommand::Import(_)) {
        for (part, operation) in operations.into_iter().enumerate() {
            let reply = client.request(vec![operation]).await.with_context(|| failed(Some(part)))?;
            lsn = reply.lsn;
            results.extend(reply.results);
        }
    } else if matches!(&command, ClientCommand::Tenant(TenantArgs { command: TenantCommand::Add { .. } })) {
        // The token only once the tenant was created by this run: the server runs each
        // operation of a request alone, and a token issued beside `tenant_exists` (a rerun,
        // a retry after a lost answer) was a live credential the run then called a failure
        // (regression, review, tenth session). `tenant rotate-token` issues one for a tenant
        // that exists.
        for operation in operations {
            let reply = client.request(vec![operation]).await.with_context(|| failed(None))?;
            lsn = reply.lsn;
            let created = reply.results.iter().all(|result| result.code().is_ok());
            results.extend(reply.results);
            if !created {
                break;
            }
        }
    } else {
        let reply = client.request(operations).await.with_context(|| failed(None))?;
        lsn = reply.lsn;
        results = reply.results;
    }
    client.close().await;
    // An import's `ok_partial` means rows were refused: a script must see it (regression,
    // review: it exited 0, as a reserve that asked for `--allow-partial` does).
    let is_import = matches!(command, ClientCommand::Import(_));
    let ok =
        results.iter().all(|result| if is_import { result.code() == ResultCode::Ok } else { result.code().is_ok() });
    let mut object = serde_json::Map::new();
    for (key, value) in extra {
        object.insert(key, value);
    }
    object.insert("lsn".into(), json!(lsn));
    let mut described: Vec<serde_json::Value> = results.iter().map(describe_json).collect();
    if is_import {
        for (index, value) in described.iter_mut().enumerate() {
            value["first_row"] = json!(index * IMPORT_ROWS_PER_REQUEST_MAX + 1);
        }
    }
    object.insert("results".into(), json!(described));
    if connection.json {
        println!("{}", serde_json::Value::Object(object));
    } else {
        if let Some(id) = object.get("operation_id") {
            println!("operation id {} (retry with --op-id to get this outcome again)", id.as_str().unwrap_or_default());
        }
        for (index, result) in results.iter().enumerate() {
            // An import's rows are numbered within the file, not within their part of
            // `IMPORT_ROWS_PER_REQUEST_MAX` (regression, review, tenth session: two parts
            // each had a row 1).
            let first_row = if is_import { index * IMPORT_ROWS_PER_REQUEST_MAX + 1 } else { 1 };
            print!("{}", describe_text(result, first_row));
        }
    }
    Ok(if ok { 0 } else { EXIT_REFUSED })
}

fn read_import(path: &std::path::Path) -> anyhow::Result<Vec<WireImportRow>> {
    let bytes = std::fs::metadata(path).with_context(|| format!("read {}", path.display()))?.len();
    anyhow::ensure!(bytes <= IMPORT_FILE_BYTES_MAX, "{} is over {} bytes", path.display(), IMPORT_FILE_BYTES_MAX);
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let rows = reservoir_net::import::parse_import(&text, ImportFormat::Detect)?;
    anyhow::ensure!(!rows.is_empty(), "{} has no rows", path.display());
    // The server refuses a part with such a row as a whole: say which rows, send nothing (the
    // gateway, which answers row by row, answers these rows alone).
    /// Refused rows named in the error, at most.
    const REFUSED_ROWS_SHOWN_MAX: usize = 10;
    let refused: Vec<String> = rows
        .iter()
        .enumerate()
        .filter_map(|(index, row)| {
            reservoir_net::import::row_name_refusal(row).map(|code| format!("row {}: {}", index + 1, code.name()))
        })
        .collect();
    anyhow::ensure!(
        refused.is_empty(),
        "{} has {} rows whose names the server refuses (at most 64 bytes, printable), nothing was sent: {}",
        path.display(),
        refused.len(),
        refused[..refused.len().min(REFUSED_ROWS_SHOWN_MAX)].join("; ")
    );
    Ok(rows)
}

fn state_name(state: ReservationState) -> &'static str {
    state.name()
}

fn counters_json(counters: &reservoir_engine::Counters) -> serde_json::Value {
    json!({
        "on_hand": counters.on_hand, "reserved": counters.reserved, "available": shown_available(counters),
        "safety_stock": counters.safety_stock, "backorder_limit": counters.backorder_limit,
    })
}

fn describe_json(result: &OperationResult) -> serde_json::Value {
    let code = result.code().name();
    match result {
        OperationResult::Reply { kind, reply } => json!({
            "operation": kind.name(), "code": code, "deadline_ms": reply.deadline_ms, "on_hand": reply.on_hand,
            "lines": reply.lines.iter().map(|line| json!({
                "code": line.code.name(), "requested": line.requested, "applied": line.applied, "available": line.available,
            })).collect::<Vec<_>>(),
        }),
        OperationResult::Sku(Ok(summary)) => json!({
            "operation": "get_sku", "code": code, "total": counters_json(&summary.total),
            "locations": summary.locations.iter().map(|item| json!({
                "sku": item.sku, "location": item.location, "counters": counters_json(&item.counters),
            })).collect::<Vec<_>>(),
        }),
        OperationResult::Reservation(Ok(view)) => json!({
            "operation": "get_reservation", "code": code, "reservation": view.reservation,
            "state": state_name(view.state), "deadline_ms": view.deadline_ms,
            "lines": view.lines.iter().map(|line| json!({
                "sku": line.sku, "location": line.location, "requested": line.requested, "reserved": line.reserved,
                "committed": line.committed, "released": line.released,
            })).collect::<Vec<_>>(),
        }),
        OperationResult::Token(Ok(token)) => json!({"operation": "issue_token", "code": code, "token": token}),
        OperationResult::ServiceToken(Ok(token)) => {
            json!({"operation": "issue_service_token", "code": code, "token": token})
        }
        OperationResult::Status(Ok(document)) => json!({
            "operation": "status", "code": code,
            "status": serde_json::from_str::<serde_json::Value>(document).unwrap_or_else(|_| json!(document)),
        }),
        OperationResult::Tenants(Ok(tenants)) => json!({
            "operation": "list_tenants", "code": code,
            "tenants": tenants.iter().map(|entry| json!({"name": entry.name, "tokens": entry.tokens})).collect::<Vec<_>>(),
        }),
        other => json!({"operation": other.kind().name(), "code": code}),
    }
}

/// `first_row`: the number of an import reply's first row within its file (1 elsewhere).
fn describe_text(result: &OperationResult, first_row: usize) -> String {
    let code = result.code().name();
    match result {
        OperationResult::Reply { kind: OperationKind::Promote, reply } if reply.code.is_ok() => {
            let term = reservoir_engine::epoch::epoch_term(reply.count);
            format!("promote {code}: this node is the primary of epoch {} (term {term})\n", reply.count)
        }
        OperationResult::Reply { kind: OperationKind::TakeSnapshot, reply } => {
            format!("take_snapshot {code}: the server is taking a snapshot covering at least LSN {}\n", reply.count)
        }
        OperationResult::Reply { kind, reply } => {
            let mut text = format!("{} {code}", kind.name());
            if reply.deadline_ms > 0 {
                text.push_str(&format!(" deadline {}", crate::time::format_ms(reply.deadline_ms)));
            }
            if matches!(kind.name(), "receive" | "adjust" | "set_on_hand") && reply.code.is_ok() {
                text.push_str(&format!(" on_hand {}", reply.on_hand));
            }
            text.push('\n');
            let unit = if *kind == OperationKind::Import { "row" } else { "line" };
            for (index, line) in reply.lines.iter().enumerate() {
                text.push_str(&format!(
                    "  {unit} {} {} requested {} applied {} available {}\n",
                    first_row + index,
                    line.code.name(),
                    line.requested,
                    line.applied,
                    line.available
                ));
            }
            text
        }
        OperationResult::Sku(Ok(summary)) => {
            let mut text = format!("{:<16} {:>12} {:>12} {:>12}\n", "location", "on_hand", "reserved", "available");
            for item in &summary.locations {
                text.push_str(&format!(
                    "{:<16} {:>12} {:>12} {:>12}\n",
                    item.location,
                    item.counters.on_hand,
                    item.counters.reserved,
                    shown_available(&item.counters)
                ));
            }
            text.push_str(&format!(
                "{:<16} {:>12} {:>12} {:>12}\n",
                "total",
                summary.total.on_hand,
                summary.total.reserved,
                shown_available(&summary.total)
            ));
            text
        }
        OperationResult::Reservation(Ok(view)) => {
            let mut text = format!(
                "reservation {} {} deadline {}\n",
                view.reservation,
                state_name(view.state),
                crate::time::format_ms(view.deadline_ms)
            );
            for line in &view.lines {
                text.push_str(&format!(
                    "  {}@{} requested {} reserved {} committed {} released {}\n",
                    line.sku, line.location, line.requested, line.reserved, line.committed, line.released
                ));
            }
            text
        }
        OperationResult::Token(Ok(token)) | OperationResult::ServiceToken(Ok(token)) => {
            format!("token (shown once, keep it): {token}\n")
        }
        OperationResult::Status(Ok(document)) => status_text(document),
        OperationResult::Tenants(Ok(tenants)) => {
            let mut text = format!("{:<32} {:>6}\n", "tenant", "tokens");
            for entry in tenants {
                text.push_str(&format!("{:<32} {:>6}\n", entry.name, entry.tokens));
            }
            text
        }
        other => format!("{} {code}\n", other.kind().name()),
    }
}

/// `reservoir status` for people: role, epoch, LSNs, lag, standbys.
fn status_text(document: &str) -> String {
    let Ok(status) = serde_json::from_str::<serde_json::Value>(document) else { return format!("{document}\n") };
    let field = |value: &serde_json::Value| match value {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let mut text = format!(
        "role {} epoch {} term {} (primary {})\napplied LSN {} durable LSN {} acknowledged LSN {}\nreplication {} ({}), RPO {} ms\n",
        field(&status["role"]),
        field(&status["epoch"]),
        field(&status["term"]),
        field(&status["primary"]),
        field(&status["applied_lsn"]),
        field(&status["durable_lsn"]),
        field(&status["acknowledged_lsn"]),
        field(&status["replication"]["mode"]),
        field(&status["replication"]["sync_state"]),
        field(&status["replication"]["rpo_ms"]),
    );
    if let Some(standbys) = status["standbys"].as_array() {
        text.push_str(&format!("standbys: {}\n", standbys.len()));
        for standby in standbys {
            text.push_str(&format!(
                "  {} {} sent {} written {} applied {} lag {} records {} bytes {} ms (not fsynced there: {} ms)\n",
                field(&standby["name"]),
                field(&standby["state"]),
                field(&standby["sent_lsn"]),
                field(&standby["written_lsn"]),
                field(&standby["applied_lsn"]),
                field(&standby["lag"]["records"]),
                field(&standby["lag"]["bytes"]),
                field(&standby["lag"]["ms"]),
                field(&standby["lag"]["flush_ms"]),
            ));
        }
    }
    let following = &status["following"];
    if following.is_object() {
        text.push_str(&format!(
            "following {} ({}, connected {}): primary durable LSN {}, lag {} records {} ms{}\n",
            field(&following["primary"]),
            field(&following["state"]),
            field(&following["connected"]),
            field(&following["primary_durable_lsn"]),
            field(&following["lag"]["records"]),
            field(&following["lag"]["ms"]),
            following["last_error"].as_str().map(|error| format!(", last error: {error}")).unwrap_or_default(),
        ));
    }
    let wal = &status["wal"];
    if wal.is_object() {
        text.push_str(&format!(
            "wal {}{}, written LSN {}\n",
            field(&wal["durability"]),
            wal["sync_interval_ms"].as_u64().map(|ms| format!(" (fsync every {ms} ms)")).unwrap_or_default(),
            field(&wal["written_lsn"]),
        ));
    }
    let idempotency = &status["idempotency"];
    if idempotency.is_object() {
        text.push_str(&format!(
            "idempotency memory: {} reservations, {} operation ids (each at most {}); fullest shard {} of {}\n",
            field(&idempotency["reservations"]),
            field(&idempotency["operations"]),
            field(&idempotency["entries_max"]),
            field(&idempotency["fullest_shard"]),
            field(&idempotency["shard_max"]),
        ));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::{node_command_refusal, status_text, ClientCommand, Connection};

    fn servers(server: &str) -> Connection {
        Connection { server: server.into(), token: None, ca: None, json: false, tenant: None }
    }

    #[test]
    fn available_from_the_wire_saturates() {
        let counters = reservoir_engine::Counters {
            on_hand: i64::MIN,
            reserved: i64::MAX,
            safety_stock: i64::MAX,
            ..Default::default()
        };
        assert_eq!(super::shown_available(&counters), i64::MIN);
        let counters = reservoir_engine::Counters { on_hand: 10, reserved: 3, safety_stock: 2, ..Default::default() };
        assert_eq!(super::shown_available(&counters), counters.available());
    }

    /// Regression (review, tenth session): `promote` given several servers went to the one
    /// the client ranked best (the primary answered "ok", nothing promoted). A command about
    /// one node is refused (exit 2) unless one server is named; the others take several.
    #[test]
    fn a_command_about_one_node_is_refused_with_several_servers() {
        for command in [ClientCommand::Promote, ClientCommand::Status, ClientCommand::TakeSnapshot] {
            let why = node_command_refusal(&servers("a:1, b:2"), &command).expect("refused");
            assert!(why.contains("2 are given"), "{why}");
            assert_eq!(node_command_refusal(&servers("a:1"), &command), None);
            assert_eq!(node_command_refusal(&servers("a:1,"), &command), None);
        }
        let list = ClientCommand::Tenant(super::TenantArgs { command: super::TenantCommand::List });
        assert_eq!(node_command_refusal(&servers("a:1,b:2"), &list), None);
    }

    #[test]
    fn the_status_text_shows_the_wal_durability_and_how_far_it_wrote() {
        let document = serde_json::json!({
            "role": "primary", "epoch": 1, "applied_lsn": 10, "durable_lsn": 8, "acknowledged_lsn": 10,
            "wal": {"durability": "relaxed", "sync_interval_ms": 10, "written_lsn": 10},
        });
        let text = status_text(&document.to_string());
        assert!(text.contains("applied LSN 10 durable LSN 8 acknowledged LSN 10\n"), "{text}");
        assert!(text.contains("wal relaxed (fsync every 10 ms), written LSN 10\n"), "{text}");
        let durable = serde_json::json!({
            "wal": {"durability": "durable", "sync_interval_ms": null, "written_lsn": 3},
        });
        assert!(status_text(&durable.to_string()).contains("wal durable, written LSN 3\n"));
    }
}
