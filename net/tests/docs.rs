//! docs/protocol.md and the code agree: every `hex` example decodes, the reserve example
//! decodes to the fields the document names, and the protocol error and operation tables list
//! exactly the codes and kinds of `net/src`.

use reservoir_engine::{LineResult, Reply, ResultCode};
use reservoir_net::{
    decode_client_frame, decode_server_frame, ClientFrame, Operation, OperationKind, OperationResult,
    ProtocolErrorCode, ReplyFrame, Request, ServerFrame, TenantEntry, WireLine,
};

fn protocol_md() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md")).unwrap()
}

/// Every ```hex block with the "Example: ..." line before it: (title, bytes).
fn hex_examples(text: &str) -> Vec<(String, Vec<u8>)> {
    let mut examples = Vec::new();
    let mut title = String::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(rest) = line.strip_prefix("Example: ") {
            title = rest.to_owned();
        }
        if line.trim() != "```hex" {
            continue;
        }
        let mut bytes = Vec::new();
        for line in lines.by_ref().take_while(|line| line.trim() != "```") {
            let data = line.split('#').next().unwrap_or("");
            for token in data.split_whitespace() {
                bytes.push(u8::from_str_radix(token, 16).unwrap_or_else(|_| panic!("bad hex {token:?} in {title}")));
            }
        }
        assert!(!title.is_empty(), "a hex block without an `Example:` line before it");
        examples.push((std::mem::take(&mut title), bytes));
    }
    examples
}

#[test]
fn docs_examples_decode() {
    let examples = hex_examples(&protocol_md());
    assert!(examples.len() >= 3, "at least a hello, a reserve request and its reply");
    let mut reserve_request = None;
    let mut reserve_reply = None;
    let mut credential_request = None;
    let mut credential_reply = None;
    for (title, bytes) in &examples {
        let client = decode_client_frame(bytes);
        let server = decode_server_frame(bytes);
        assert!(client.is_ok() || server.is_ok(), "example {title:?} decodes as neither: {client:?} / {server:?}");
        // Re-encoding gives the same bytes: the example is canonical.
        let mut again = Vec::new();
        match (client, server) {
            (Ok(frame), _) => frame.encode(&mut again).unwrap(),
            (_, Ok(frame)) => frame.encode(&mut again).unwrap(),
            _ => unreachable!(),
        }
        assert_eq!(&again, bytes, "example {title:?} is not what the encoder writes");
        if title.starts_with("reserve request") {
            reserve_request = Some(decode_client_frame(bytes).unwrap());
        }
        if title.starts_with("reserve reply") {
            reserve_reply = Some(decode_server_frame(bytes).unwrap());
        }
        if title.starts_with("credential request") {
            credential_request = Some(decode_client_frame(bytes).unwrap());
        }
        if title.starts_with("credential reply") {
            credential_reply = Some(decode_server_frame(bytes).unwrap());
        }
        if title.starts_with("hello (") {
            assert!(matches!(decode_client_frame(bytes), Ok(ClientFrame::Hello(_))));
        }
    }
    assert_eq!(
        reserve_request,
        Some(ClientFrame::Request(Request {
            request_id: 7,
            operations: vec![Operation::Reserve {
                reservation: "order-1".into(),
                ttl_ms: 60_000,
                allow_partial: false,
                lines: vec![WireLine { sku: "SKU-1".into(), location: "WH1".into(), quantity: 5 }],
            }],
        })),
        "the reserve request example"
    );
    assert_eq!(
        reserve_reply,
        Some(ServerFrame::Reply(ReplyFrame {
            request_id: 7,
            epoch: 1_048_579,
            lsn: 42,
            first_operation: 0,
            is_final: true,
            results: vec![OperationResult::Reply {
                kind: OperationKind::Reserve,
                reply: Reply {
                    code: ResultCode::Ok,
                    lines: vec![LineResult { code: ResultCode::Ok, requested: 5, applied: 5, available: 95 }].into(),
                    deadline_ms: 1_700_000_060_000,
                    on_hand: 0,
                    count: 0,
                },
            }],
        })),
        "the reserve reply example"
    );
    assert_eq!(
        credential_request,
        Some(ClientFrame::Request(Request {
            request_id: 9,
            operations: vec![
                Operation::IssueToken { tenant: "acme".into(), revoke_others: true },
                Operation::ListTenants
            ],
        })),
        "the credential request example"
    );
    assert_eq!(
        credential_reply,
        Some(ServerFrame::Reply(ReplyFrame {
            request_id: 9,
            epoch: 1_048_579,
            lsn: 42,
            first_operation: 0,
            is_final: true,
            results: vec![
                OperationResult::Token(Ok(format!("rsv_{}", "0123456789abcdef".repeat(4)))),
                OperationResult::Tenants(Ok(vec![
                    TenantEntry { name: "acme".into(), tokens: 1 },
                    TenantEntry { name: "globex".into(), tokens: 2 },
                ])),
            ],
        })),
        "the credential reply example"
    );
}

/// The rows of the markdown table in the section that starts with `heading`.
fn table_rows(text: &str, heading: &str) -> Vec<Vec<String>> {
    let section = text.split(heading).nth(1).unwrap_or_else(|| panic!("no {heading:?} section"));
    let section = section.split("\n#").next().unwrap();
    section
        .lines()
        .filter(|line| line.starts_with("| ") && !line.starts_with("| -"))
        .skip(1) // the header row
        .map(|row| row.split('|').map(|cell| cell.trim().to_owned()).collect())
        .collect()
}

#[test]
fn protocol_errors_match_docs_protocol_md() {
    let text = protocol_md();
    let listed: Vec<(u16, String, bool)> = table_rows(&text, "\n### Protocol errors\n")
        .iter()
        .map(|cells| {
            let number = cells[1].parse().unwrap_or_else(|_| panic!("bad number in {cells:?}"));
            let closes = match cells[3].as_str() {
                "yes" => true,
                "no" => false,
                other => panic!("closes must be yes or no, not {other:?}"),
            };
            (number, cells[2].trim_matches('`').to_owned(), closes)
        })
        .collect();
    let actual: Vec<(u16, String, bool)> = ProtocolErrorCode::ALL
        .iter()
        .map(|code| (code.number(), code.name().to_owned(), code.closes_connection()))
        .collect();
    assert_eq!(listed, actual, "docs/protocol.md and net/src/wire.rs disagree");
}

#[test]
fn operation_kinds_match_docs_protocol_md() {
    let text = protocol_md();
    let listed: Vec<(u8, String, bool)> = table_rows(&text, "\n### Operations\n")
        .iter()
        .map(|cells| {
            let number = cells[1].parse().unwrap_or_else(|_| panic!("bad kind in {cells:?}"));
            (number, cells[2].trim_matches('`').to_owned(), cells[3] == "yes")
        })
        .collect();
    let actual: Vec<(u8, String, bool)> =
        OperationKind::ALL.iter().map(|kind| (kind.number(), kind.name().to_owned(), kind.is_read_only())).collect();
    assert_eq!(listed, actual, "docs/protocol.md and net/src/operation.rs disagree");
    for cells in table_rows(&text, "\n### Operations\n") {
        let kind = OperationKind::from_number(cells[1].parse().unwrap()).unwrap();
        assert_eq!(cells[4] == "admin", kind.is_admin(), "who may run {}", kind.name());
    }
}
